"""verify: a real Tinker call checked by the library (tl_verify_text), its
findings as data and worded as `tinkerloss verify` words them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._arrays import matrix
from ._batch import _c_logits
from ._dump import dump_text
from ._lib import Status, check, context, fail, ffi, lib

__all__ = ["Finding", "FindingKind", "VerifyReport", "verify"]

# tl_finding_kind, less the TL_ prefix: FindingKind.FINDING_LOGPROB.
FindingKind = enum.IntEnum("FindingKind", {
    name[3:]: value for value, name in sorted(ffi.typeof("tl_finding_kind").elements.items())})


@dataclass(frozen=True)
class Finding:
    """One finding of a verification, as the library reports it (see
    tl_finding in tinkerloss_io.h); text (and str()) is its line as the
    command line prints it (tl_finding_text)."""

    kind: FindingKind
    is_note: bool
    local: bool
    path: str
    name: str
    datum: int
    position: int
    count: int
    server: float
    recomputed: float
    tolerance: float
    message: str
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class VerifyReport:
    """The findings of a verification (problems and notes, in order) and
    the number of problems; ok when there are none."""

    findings: list
    problems: int

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def __str__(self) -> str:
        lines = [str(f) for f in self.findings]
        lines.append(f"{self.problems} problem{'' if self.problems == 1 else 's'}")
        return "\n".join(lines)


def _text(chars) -> str:
    return ffi.string(chars).decode("utf-8", "replace")


@ffi.callback("void(void *, const tl_finding *)")
def _collect(user, f):
    ffi.from_handle(user).append(Finding(
        FindingKind(f.kind), bool(f.is_note), bool(f.local), _text(f.path), _text(f.name),
        int(f.datum), int(f.position), int(f.count), float(f.server), float(f.recomputed),
        float(f.tolerance), _text(f.message), _line(f)))


def _line(f) -> str:
    buf = ffi.new("char[]", lib.tl_finding_text(f, ffi.NULL, 0) + 1)
    lib.tl_finding_text(f, buf, len(buf))
    return _text(buf)


def _tolerance(value, name: str, default: float) -> float:
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise fail(Status.ERR_VALUE, name, f"{name} is {value!r}, expected a number") from None


def verify(data, loss_fn, loss_fn_config, result, *, logits=None, atol=None, rtol=None,
           temperature=1.0, threads=None):
    """Check a real forward_backward call: the request (data, loss_fn,
    loss_fn_config) and the server's result (ForwardBackwardOutput of either
    SDK generation, or its dict), as `tinkerloss verify` checks a dump.

    logits: the model's logits, one [N_i, V] array per datum (float32, or
    bfloat16 torch tensors): each server logprob is then compared with the
    one computed from them. atol, rtol: the tolerances of every comparison
    (default 1e-5 each, as the command line's). Returns a VerifyReport.
    """
    text = dump_text(data, loss_fn, loss_fn_config, result)
    opts = ffi.new("tl_verify_opts *", {"atol": _tolerance(atol, "atol", 1e-5),
                                        "rtol": _tolerance(rtol, "rtol", 1e-5)})
    keep = []
    if logits is not None:
        if not isinstance(logits, (list, tuple)):
            raise fail(Status.ERR_VALUE, "logits", "logits: expected one [N, V] array per datum")
        mem = ffi.new("tl_logits[]", max(len(logits), 1))
        for i, x in enumerate(logits):
            keep.append(matrix(x, f"logits[{i}]"))
            _c_logits(mem[i], keep[-1])
        opts.logits_mem, opts.nlogits_mem = mem, len(logits)
    findings = []
    handle = ffi.new_handle(findings)
    problems = ffi.new("int64_t *")
    ctx = context(threads=threads, temperature=temperature)
    check(lib.tl_verify_text(ctx.ptr, text.encode(), opts, _collect, handle, problems, ctx.err),
          ctx.err)
    return VerifyReport(findings, int(problems[0]))

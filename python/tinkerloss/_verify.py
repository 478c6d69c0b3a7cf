"""verify: a real Tinker call checked by the library (tl_verify_text), its
findings as data and worded as `tinkerloss verify` words them."""

from __future__ import annotations

import enum
import math
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
    tl_finding in tinkerloss_io.h); str() words it as the command line."""

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

    def __str__(self) -> str:
        return ("note: " if self.is_note else "FINDING ") + _words(self)


def _at(f: Finding) -> str:
    return f"{f.path}[{f.position}]" if f.position >= 0 else f.path


def _in_all(f: Finding, what: str) -> str:
    return f"; {f.count} {what} in all" if f.count > 1 else ""


def _g(x: float, digits: int) -> str:
    """C's %.<digits>g."""
    return "nan" if math.isnan(x) else ("inf" if x == math.inf else "-inf" if x == -math.inf
                                        else f"{x:.{digits}g}")


def _metric(f: Finding) -> str:
    diff = abs(f.server - f.recomputed)
    tail = ((": explained by the logprob differences" if diff > f.tolerance else "")
            if f.is_note else ": DISAGREES")
    return (f"metric {f.name}: server {_g(f.server, 9)}, "
            f"{'from the logits' if f.local else 'recomputed'} {_g(f.recomputed, 9)}, "
            f"|difference| {_g(diff, 3)} (tolerance {_g(f.tolerance, 3)}){tail}")


def _words(f: Finding) -> str:
    k, K = f.kind, FindingKind
    s, r, j = f.server, f.recomputed, f.position
    if k == K.FINDING_TOKEN:
        return f"{_at(f)}: token {s:.0f} is negative"
    if k == K.FINDING_LENGTH:
        return f"{f.path}: model_input has {s:.0f} positions but target_tokens has length {r:.0f}"
    if k == K.FINDING_SHIFT:
        return (f"{f.path}: target_tokens[{j}] is {s:.0f} but model_input[{j + 1}] is {r:.0f} "
                f"(targets must be the input shifted by one){_in_all(f, 'positions')}")
    if k == K.FINDING_UNSHIFTED:
        return (f"{f.path} equals model_input: the targets are not shifted (target_tokens must "
                f"be model_input[1:] followed by the next token){_in_all(f, 'datums')}")
    if k == K.FINDING_OUTPUTS:
        return f"{f.path} has {s:.0f} values but target_tokens has {r:.0f}"
    if k == K.FINDING_RESPONSE_VALUE:
        what = 'missing (null or "nan")' if math.isnan(s) else "infinite"
        return f"{_at(f)} is {what}{_in_all(f, 'such values')}"
    if k == K.FINDING_POSITIVE:
        return (f"{_at(f)} = {_g(s, 9)} is positive (a probability above 1)"
                f"{_in_all(f, 'positive values')}")
    if k == K.FINDING_LOGPROB:
        return (f"{_at(f)}: server {_g(s, 9)}, from the logits {_g(r, 9)}, |difference| "
                f"{_g(abs(s - r), 3)} (tolerance {_g(f.tolerance, 3)})")
    if k == K.NOTE_LOGPROBS:
        return (f"data[{f.datum}] logprobs: largest |server - from the logits| "
                f"{_g(abs(s - r), 3)} at position {j} (server {_g(s, 9)}, from the logits "
                f"{_g(r, 9)}) over {f.count} tokens")
    if k in (K.FINDING_METRIC, K.NOTE_METRIC):
        return _metric(f)
    if k == K.FINDING_METRIC_TYPE:
        return f"{f.path} is not a number"
    if k == K.FINDING_NO_LOSS:
        return f"response.metrics has no loss:sum to check (recomputed {_g(r, 9)})"
    if k == K.NOTE_UNCHECKED:
        return f"metric {f.name} = {_g(s, 9)}: not computed by tinkerloss, not checked"
    if k == K.NOTE_SKIPPED:
        return "the loss was not recomputed: the request or the response is not consistent"
    if k == K.NOTE_GAP:
        return f"sampler vs trainer: {f.name} = {_g(r, 6)}"
    return ("from the logits: " if f.local else "") + f.message  # REQUEST, LOSS


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
        float(f.tolerance), _text(f.message)))


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

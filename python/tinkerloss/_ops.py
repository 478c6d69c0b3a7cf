"""Per-token logprobs and their gradient, on arrays of any leading shape."""

from __future__ import annotations

from ._arrays import BF16, F32, I64, Operand, blocks, check_rows, new, view
from ._lib import Error, Status, check, context, fail, ffi, lib

__all__ = ["logprobs", "logprobs_backward"]

# The library's argument names and what the Python caller called them.
_ARGS = {"g": "grad_logprobs", "ge": "grad_entropy", "grad": "out"}


def _logits_and_targets(logits, targets):
    """Views of logits [..., V] and targets [...] or [..., K]; the leading
    shape and K."""
    lv = view(logits, "logits", (F32, BF16))
    if lv.ndim < 1:
        raise fail(Status.ERR_SHAPE, "logits", "logits is 0-dimensional, expected [..., V]")
    check_rows(lv, "logits", lv.ndim - 1)
    lead = lv.shape[:-1]
    tv = view(targets, "targets", (I64,))
    if tv.shape == lead:
        k = 1
    elif tv.ndim == len(lead) + 1 and tv.shape[:-1] == lead:
        k = tv.shape[-1]
        check_rows(tv, "targets", len(lead))
    else:
        raise fail(Status.ERR_SHAPE, "targets", f"targets has shape {list(tv.shape)}; logits of "
                   f"shape {list(lv.shape)} take targets of shape {list(lead)} or "
                   f"{list(lead)} + [K]")
    if not 1 <= k <= lib.TL_MAX_TARGETS:
        raise fail(Status.ERR_SIZE, "targets", f"{k} targets per row; 1 to "
                   f"{lib.TL_MAX_TARGETS} are supported")
    return lv, tv, lead, k


def _rebased(e: Error, row0: int, k: int) -> Error:
    """An Error of one block of rows (from row0) with the caller's argument
    names and the index over the whole array."""
    arg = _ARGS.get(e.arg, e.arg)
    index, message = e.index, e.message
    if index >= 0 and row0:
        index += row0 * k if arg in ("targets", "grad_logprobs") else row0
        message += f" (in the rows from {row0} on: index {index} of the whole array)"
    return Error(e.status, arg, index, message)


def logprobs(logits, targets, *, temperature=1.0, return_lse=False, return_entropy=False,
             threads=None):
    """Target-token logprobs log softmax(logits / T)[target].

    logits: float32 (numpy or torch) or bfloat16 (torch) [..., V], the last
    dimension contiguous, any other strides (a slice of [B, L, V] is read in
    place). targets: int64 [...] (one target per row) or [..., K]. Returns
    float32 logprobs shaped like targets, of the logits' kind; with
    return_lse / return_entropy also the per-row logsumexp(z) and entropy
    ([...]), as a tuple (logprobs, lse, entropy) of those asked for.
    threads: the call's OpenMP threads (None: the process's default).
    """
    lv, tv, lead, k = _logits_and_targets(logits, targets)
    ctx = context(threads=threads, temperature=temperature)
    lp = new(lv.kind, tv.shape, F32)
    lse = new(lv.kind, lead, F32) if return_lse else None
    ent = new(lv.kind, lead, F32) if return_entropy else None
    ops = [Operand(lv, "logits", None, lv.shape[-1]), Operand(tv, "targets", k),
           Operand(view(lp, "logprobs", (F32,)), "logprobs", k),
           Operand(view(lse, "lse", (F32,)) if lse is not None else None, "lse", 1),
           Operand(view(ent, "entropy", (F32,)) if ent is not None else None, "entropy", 1)]
    cl = ffi.new("tl_logits *", {"dtype": lv.dtype, "vocab": lv.shape[-1]})
    out = ffi.new("tl_logprobs_out *")
    for row0, rows, addrs in blocks(lead, ops):
        cl.data, cl.rows, cl.stride = ffi.cast("void *", addrs[0][0]), rows, addrs[0][1]
        out.logprobs = ffi.cast("float *", addrs[2][0])
        out.lse = ffi.cast("float *", addrs[3][0])
        out.entropy = ffi.cast("float *", addrs[4][0])
        try:
            check(lib.tl_logprobs(ctx.ptr, cl, ffi.cast("int64_t *", addrs[1][0]), k, out,
                                   ctx.err), ctx.err)
        except Error as e:
            raise _rebased(e, row0, k) from None
    extra = tuple(x for x, want in ((lse, return_lse), (ent, return_entropy)) if want)
    return (lp, *extra) if extra else lp


def _grad_out(lv, out, grad_dtype):
    """The gradient's view: `out` (checked) or a new array."""
    want = _dtype_code(grad_dtype) if grad_dtype is not None else None
    if out is None:
        dtype = want if want is not None else lv.dtype
        if lv.kind == "numpy" and dtype == BF16:
            raise fail(Status.ERR_DTYPE, "grad_dtype", "numpy has no bfloat16: pass torch logits")
        out = new(lv.kind, lv.shape, dtype)
    ov = view(out, "out", (F32, BF16), writable=True)
    if ov.shape != lv.shape:
        raise fail(Status.ERR_SHAPE, "out", f"out has shape {list(ov.shape)}, the logits "
                   f"{list(lv.shape)}")
    if want is not None and ov.dtype != want:
        raise fail(Status.ERR_DTYPE, "out", f"out is {_name(ov.dtype)} but grad_dtype is "
                   f"{_name(want)}")
    check_rows(ov, "out", ov.ndim - 1)
    _same_or_apart(lv, ov)
    return out, ov


def _name(code):
    return "bfloat16" if code == BF16 else "float32"


def _dtype_code(d) -> int:
    name = str(d).replace("torch.", "").replace("<class 'numpy.", "").rstrip("'>")
    if name in ("float32", "f4", "float"):
        return F32
    if name in ("bfloat16", "bf16"):
        return BF16
    raise fail(Status.ERR_DTYPE, "grad_dtype", f"grad_dtype {d!r}: expected float32 or bfloat16")


def _extent(v):
    lo = hi = v.ptr
    for n, s in zip(v.shape, v.strides):
        if n == 0:
            return v.ptr, v.ptr
        hi += (n - 1) * s * v.itemsize
    return lo, hi + v.itemsize


def _same_or_apart(lv, ov):
    """The gradient overwrites the logits exactly or not at all."""
    a, b = _extent(lv), _extent(ov)
    if a[0] < b[1] and b[0] < a[1] and (lv.ptr, lv.strides, lv.dtype) != (ov.ptr, ov.strides, ov.dtype):
        raise fail(Status.ERR_VALUE, "out", "out overlaps the logits without being them; the "
                   "gradient may overwrite the logits only in place (the same array)")


def logprobs_backward(logits, targets, grad_logprobs, *, temperature=1.0, grad_entropy=None,
                      out=None, grad_dtype=None, threads=None):
    """The gradient with respect to the logits of a loss L, given
    grad_logprobs = dL/dlogprobs (float32, shaped like targets) and
    optionally grad_entropy = dL/dentropy (float32 [...]).

    Written into `out` when given (shaped like the logits; float32, or for
    bfloat16 logits bfloat16 or float32; it may be the logits themselves),
    else into a new array of the logits' kind and dtype (grad_dtype:
    float32 asks a float32 gradient of bfloat16 logits). Returns it.
    """
    lv, tv, lead, k = _logits_and_targets(logits, targets)
    gv = view(grad_logprobs, "grad_logprobs", (F32,))
    if gv.shape != tv.shape:
        raise fail(Status.ERR_SHAPE, "grad_logprobs", f"grad_logprobs has shape "
                   f"{list(gv.shape)}, the targets {list(tv.shape)}")
    ev = None
    if grad_entropy is not None:
        ev = view(grad_entropy, "grad_entropy", (F32,))
        if ev.shape != lead:
            raise fail(Status.ERR_SHAPE, "grad_entropy", f"grad_entropy has shape "
                       f"{list(ev.shape)}, expected {list(lead)}")
    out, ov = _grad_out(lv, out, grad_dtype)
    ctx = context(threads=threads, temperature=temperature)
    ops = [Operand(lv, "logits", None, lv.shape[-1]), Operand(tv, "targets", k),
           Operand(gv, "grad_logprobs", k), Operand(ev, "grad_entropy", 1),
           Operand(ov, "out", None, lv.shape[-1])]
    cl = ffi.new("tl_logits *", {"dtype": lv.dtype, "vocab": lv.shape[-1]})
    cg = ffi.new("tl_grad *", {"dtype": ov.dtype})
    for row0, rows, addrs in blocks(lead, ops):
        cl.data, cl.rows, cl.stride = ffi.cast("void *", addrs[0][0]), rows, addrs[0][1]
        cg.data, cg.stride = ffi.cast("void *", addrs[4][0]), addrs[4][1]
        ge = ffi.cast("float *", addrs[3][0]) if ev is not None else ffi.NULL
        try:
            check(lib.tl_logprobs_backward(ctx.ptr, cl, ffi.cast("int64_t *", addrs[1][0]), k,
                                            ffi.cast("float *", addrs[2][0]), ge, cg, ctx.err),
                   ctx.err)
        except Error as e:
            raise _rebased(e, row0, k) from None
    return out

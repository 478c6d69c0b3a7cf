"""Batches of datums: forward_backward, the loss from logprobs, chunked
results. Datums are read by duck typing (_sdk.py); their arrays, the logits
and the outputs are handed to the library where they lie."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._arrays import BF16, F32, I64, check_rows, kind_of, matrix, new, view
from ._lib import Status, check, context, fail, ffi, lib
from ._sdk import _describe, _get, datum_inputs, float_map

__all__ = ["ForwardBackwardResult", "LossResult", "Datums", "forward_backward", "loss",
           "combine_results", "loss_config", "metrics_dict", "float_arrays"]

# The loss_fn_inputs the library knows (the fields of tl_datum).
INPUT_KEYS = ("target_tokens", "weights", "logprobs", "advantages", "clip_low_threshold",
              "clip_high_threshold", "mask")


@dataclass
class ForwardBackwardResult:
    """What forward_backward computes, in the SDK's ForwardBackwardOutput
    shape (loss_fn_output_type, loss_fn_outputs, metrics) plus the gradients
    with respect to the logits (None for a forward-only call)."""

    loss_fn_outputs: list
    metrics: dict
    grad_logits: list | None = None
    loss_fn_output_type: str = "ArrayRecord"


@dataclass
class LossResult:
    """A loss, its metrics and dloss/dlogprobs per datum."""

    loss: float
    metrics: dict = field(default_factory=dict)
    grad_logprobs: list = field(default_factory=list)


def loss_config(loss_fn, loss_fn_config):
    """The tl_loss_config of a loss name and its config mapping."""
    if not isinstance(loss_fn, str):
        raise fail(Status.ERR_CONFIG, "loss_fn", f"loss_fn is {_describe(loss_fn)}, "
                   "expected a loss name such as 'ppo'")
    values = float_map(loss_fn_config, "loss_fn_config") if loss_fn_config is not None else {}
    keep = [ffi.new("char[]", k.encode()) for k in values]
    keys = ffi.new("char *[]", keep)
    vals = ffi.new("double[]", list(values.values()))
    cfg = ffi.new("tl_loss_config *")
    err = ffi.new("tl_error *")
    check(lib.tl_loss_config_init(cfg, loss_fn.encode(), keys, vals, len(values), err), err)
    return cfg


def metrics_dict(m) -> dict:
    """A tl_metrics as a dict: floats, and ints for the integer hashes."""
    out = {}
    for i in range(m.count):
        item = m.items[i]
        name = ffi.string(item.name).decode()
        if item.is_int == 1:
            out[name] = int(item.ivalue)
        elif item.is_int == 2:
            out[name] = int(item.ivalue) & 0xFFFFFFFFFFFFFFFF
        else:
            out[name] = float(item.value)
    return out


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class Datums:
    """The tl_datum structs of a list of datums, pointing into their arrays
    (kept alive here). Inputs the library does not know are an Error."""

    def __init__(self, data, *, extra=None):
        if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Sequence):
            raise fail(Status.ERR_VALUE, "data", f"data is {_describe(data)}, expected a list "
                       "of datums")
        self.n = len(data)
        self.c = ffi.new("tl_datum[]", max(self.n, 1))
        self.inputs = []
        for i, d in enumerate(data):
            inputs = datum_inputs(d, f"data[{i}]")
            if extra is not None:
                inputs = _merged(inputs, extra[i], i)
            for key, arr in inputs.items():
                self._set(i, key, arr)
            self.inputs.append(inputs)

    def _set(self, i, key, arr):
        path = f"data[{i}].loss_fn_inputs.{key}"
        if key not in INPUT_KEYS:
            raise fail(Status.ERR_CONFIG, path, f"{path}: not an input of any loss (the "
                       f"library takes {', '.join(INPUT_KEYS)})")
        if arr.ndim not in (1, 2):
            raise fail(Status.ERR_SHAPE, path, f"{path}: {arr.ndim}-D, expected [N] or [N, K]")
        t = getattr(self.c[i], key)
        t.data = ffi.cast("void *", _addr(arr))
        t.dtype = I64 if key == "target_tokens" else F32
        t.ndim = arr.ndim
        t.shape = [arr.shape[0], arr.shape[1] if arr.ndim == 2 else 1]

    def targets_shape(self, i) -> tuple:
        t = self.inputs[i].get("target_tokens")
        if t is None:
            raise fail(Status.ERR_MISSING, f"data[{i}].loss_fn_inputs.target_tokens",
                       f"data[{i}].loss_fn_inputs.target_tokens is missing")
        return t.shape


def _merged(inputs: dict, extra, i: int) -> dict:
    """A datum's inputs with those given beside it (builtin_loss's `inputs`)."""
    from ._sdk import _read_tensor
    if not isinstance(extra, Mapping):
        raise fail(Status.ERR_VALUE, f"inputs[{i}]", f"inputs[{i}] is {_describe(extra)}, "
                   "expected a mapping of loss input names to arrays")
    out = dict(inputs)
    for key, value in extra.items():
        path = f"inputs[{i}].{key}"
        if key in out:
            raise fail(Status.ERR_CONFIG, path, f"{path}: data[{i}] already has {key}")
        t = _read_tensor(value, key, path)
        out[key] = t.dense(np.int64 if key == "target_tokens" else np.float32, path)
    return out


def _logits_views(logits, datums: Datums) -> list:
    """One [N_i, V] view per datum: from a list, or rows of one array."""
    if kind_of(logits) is not None:
        lv = view(logits, "logits", (F32, BF16))
        sizes = [datums.targets_shape(i)[0] for i in range(datums.n)]
        if lv.ndim != 2 or lv.shape[0] != sum(sizes):
            raise fail(Status.ERR_SHAPE, "logits", f"logits has shape {list(lv.shape)}; one "
                       f"array holds the datums' rows packed: [{sum(sizes)}, V]")
        starts = np.cumsum([0] + sizes)
        logits = [logits[int(a):int(b)] for a, b in zip(starts[:-1], starts[1:])]
    if not isinstance(logits, Sequence) or len(logits) != datums.n:
        raise fail(Status.ERR_SHAPE, "logits", f"logits: {_count(logits)}, expected one "
                   f"[N, V] array per datum ({datums.n}) or one [sum N, V] array")
    return [matrix(x, f"logits[{i}]") for i, x in enumerate(logits)]


def _count(x) -> str:
    return f"{len(x)} arrays" if isinstance(x, Sequence) else _describe(x)


def _c_logits(cl, v) -> None:
    cl.data = ffi.cast("void *", v.ptr)
    cl.dtype = v.dtype
    cl.rows, cl.vocab = v.shape
    cl.stride = v.strides[0] if v.shape[0] > 1 else v.shape[1]


def _grad_outs(views, out):
    """The gradient arrays: those of `out` (checked) or new ones."""
    if out is None:
        out = [new(v.kind, v.shape, v.dtype) for v in views]
    elif kind_of(out) is not None:
        sizes = np.cumsum([0] + [v.shape[0] for v in views])
        out = [out[int(a):int(b)] for a, b in zip(sizes[:-1], sizes[1:])]
    if not isinstance(out, Sequence) or len(out) != len(views):
        raise fail(Status.ERR_SHAPE, "out", f"out: {_count(out)}, expected one per datum "
                   f"({len(views)})")
    gviews = []
    for i, (o, v) in enumerate(zip(out, views)):
        g = view(o, f"out[{i}]", (F32, BF16), writable=True)
        if g.shape != v.shape:
            raise fail(Status.ERR_SHAPE, f"out[{i}]", f"out[{i}] has shape {list(g.shape)}, "
                       f"its logits {list(v.shape)}")
        check_rows(g, f"out[{i}]", 1)
        gviews.append(g)
    return list(out), gviews


def forward_backward(data, loss_fn, loss_fn_config=None, *, logits, temperature=1.0,
                     grads=True, out=None, threads=None, entropy=False):
    """What the server computes for forward_backward(data, loss_fn,
    loss_fn_config), from the model's logits.

    data: SDK datums of either generation, or their dicts. logits: one
    [N_i, V] array per datum (float32, or bfloat16 torch tensors; rows any
    stride apart) or one [sum N_i, V] array of them all. Returns a
    ForwardBackwardResult: loss_fn_outputs [{"logprobs": ...}] (float32, the
    logits' kind), metrics, and grad_logits, written into the arrays of
    `out` (one per datum, or one packed array; they may be the logits
    themselves) when given. grads=False: forward only. entropy=True adds
    entropy:mean.
    """
    cfg = loss_config(loss_fn, loss_fn_config)
    datums = Datums(data)
    views = _logits_views(logits, datums)
    n = datums.n
    for i, v in enumerate(views):
        _c_logits(datums.c[i].logits, v)
    lps = [new(v.kind, datums.targets_shape(i), F32) for i, v in enumerate(views)]
    lp_ptrs = ffi.new("float *[]", [ffi.cast("float *", view(x, "logprobs", (F32,)).ptr)
                                    for x in lps] or [ffi.NULL])
    grad_out, cgrads = None, ffi.NULL
    if grads:
        grad_out, gviews = _grad_outs(views, out)
        cgrads = ffi.new("tl_grad[]", [{"data": ffi.cast("void *", g.ptr), "dtype": g.dtype,
                                        "stride": g.strides[0] if g.shape[0] > 1 else g.shape[1]}
                                       for g in gviews] or [{}])
    elif out is not None:
        raise fail(Status.ERR_CONFIG, "out", "out is given but grads=False")
    metrics = ffi.new("tl_metrics *")
    batch = ffi.new("tl_batch *", {"data": datums.c, "ndata": n})
    res = ffi.new("tl_results *", {"logprobs": lp_ptrs, "grads": cgrads, "metrics": metrics})
    ctx = context(threads=threads, temperature=temperature, entropy=entropy)
    check(lib.tl_forward_backward(ctx.ptr, cfg, batch, res, ctx.err), ctx.err)
    return ForwardBackwardResult([{"logprobs": x} for x in lps], metrics_dict(metrics), grad_out)


def float_arrays(arrays, name: str, shapes) -> list:
    """Views of one float32 array per datum, each holding `shapes[i]`
    elements contiguously (numpy or torch)."""
    if not isinstance(arrays, Sequence) or isinstance(arrays, (str, bytes)) or \
            len(arrays) != len(shapes):
        raise fail(Status.ERR_SHAPE, name, f"{name}: {_count(arrays)}, expected one array per "
                   f"datum ({len(shapes)})")
    views = []
    for i, (x, shape) in enumerate(zip(arrays, shapes)):
        v = view(x, f"{name}[{i}]", (F32,))
        if int(np.prod(v.shape)) != int(np.prod(shape)):
            raise fail(Status.ERR_SHAPE, f"{name}[{i}]", f"{name}[{i}] has shape "
                       f"{list(v.shape)}, its datum's targets {list(shape)}")
        if not _packed(v):
            raise fail(Status.ERR_SIZE, f"{name}[{i}]", f"{name}[{i}] is not contiguous; pass "
                       ".contiguous() (torch) or np.ascontiguousarray (numpy)")
        views.append(v)
    return views


def _packed(v) -> bool:
    expect = 1
    for n, s in zip(reversed(v.shape), reversed(v.strides)):
        if n != 1 and s != expect:
            return False
        expect *= n
    return True


def loss(data, loss_fn, loss_fn_config, logprobs, *, extra_inputs=None):
    """The loss, the metrics and dloss/dlogprobs of a batch from its
    per-token logprobs alone (one float32 array per datum, shaped like its
    target_tokens); the gradients are of the logprobs' kind."""
    cfg = loss_config(loss_fn, loss_fn_config)
    datums = Datums(data, extra=extra_inputs)
    shapes = [datums.targets_shape(i) for i in range(datums.n)]
    views = float_arrays(logprobs, "logprobs", shapes)
    grads = [new(v.kind, v.shape, F32) for v in views]
    lp_ptrs = ffi.new("float *[]", [ffi.cast("float *", v.ptr) for v in views] or [ffi.NULL])
    g_ptrs = ffi.new("float *[]", [ffi.cast("float *", view(g, "grad", (F32,)).ptr)
                                   for g in grads] or [ffi.NULL])
    metrics = ffi.new("tl_metrics *")
    err = ffi.new("tl_error *")
    check(lib.tl_loss_eval(cfg, datums.c, datums.n, lp_ptrs, g_ptrs, metrics, err), err)
    m = metrics_dict(metrics)
    return LossResult(m["loss:sum"], m, grads)


def combine_results(results):
    """Results of the chunks of one batch combined as the SDK combines them
    (tinker/lib/chunked_fwdbwd_helpers.py, combine_fwd_bwd_output_results):
    loss_fn_outputs concatenated, metrics combined by their reductions
    (tl_metrics_combine), weighted by each chunk's number of outputs."""
    results = list(results)
    if not results:
        return ForwardBackwardResult([], {}, None, "")
    chunks = ffi.new("tl_metrics[]", len(results))
    ndatums, outputs = [], []
    for c, r in enumerate(results):
        outs = _get(r, "loss_fn_outputs", f"results[{c}]")
        if not isinstance(outs, Sequence):
            raise fail(Status.ERR_VALUE, f"results[{c}].loss_fn_outputs",
                       f"results[{c}].loss_fn_outputs is {_describe(outs)}, expected a list")
        outputs.extend(outs)
        ndatums.append(len(outs))
        metrics = float_map(_get(r, "metrics", f"results[{c}]"), f"results[{c}].metrics")
        for name, value in metrics.items():
            if lib.tl_metrics_set(ffi.addressof(chunks, c), name.encode(), value):
                why = (f"more than {lib.TL_MAX_METRICS} metrics"
                       if chunks[c].count == lib.TL_MAX_METRICS
                       else f"metric name {name!r} is empty or longer than 63 bytes")
                raise fail(Status.ERR_SIZE, f"results[{c}].metrics", f"results[{c}].metrics: {why}")
    out = ffi.new("tl_metrics *")
    err = ffi.new("tl_error *")
    check(lib.tl_metrics_combine(chunks, ffi.new("int64_t[]", ndatums), len(results), out, err),
          err)
    kind = _get(results[0], "loss_fn_output_type", "results[0]", "ArrayRecord")
    grads = [_get(r, "grad_logits", "", None) for r in results]
    grads = None if any(g is None for g in grads) else [g for gs in grads for g in gs]
    return ForwardBackwardResult(outputs, metrics_dict(out), grads, kind)

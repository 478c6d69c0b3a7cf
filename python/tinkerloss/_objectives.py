"""The library's helpers around the losses: the cookbook's DPO and SFT mean
NLL, KL estimators and penalties, distillation advantages, group
advantages, and datums built from samples and trajectories."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ._arrays import F32, new, view
from ._batch import Datums, LossResult, _packed, float_arrays, metrics_dict
from ._lib import Status, check, fail, ffi, lib
from ._sdk import _describe

__all__ = ["dpo_loss", "mean_nll", "kl_estimate", "kl_penalty", "distillation_advantages",
           "group_advantages", "datum_from_sample", "datums_from_trajectory", "KL"]


def _err():
    return ffi.new("tl_error *")


def _ptrs(views):
    return ffi.new("float *[]", [ffi.cast("float *", v.ptr) for v in views] or [ffi.NULL])


def _grads(views):
    grads = [new(v.kind, v.shape, F32) for v in views]
    return grads, _ptrs([view(g, "grad", (F32,)) for g in grads])


def dpo_loss(data, logprobs, ref_logprobs, *, beta=0.1):
    """The cookbook's DPO (preference/train_dpo.py, compute_dpo_loss) over
    datums in (chosen, rejected) pairs, each sequence's logprob the sum of
    its token logprobs weighted by its datum's `weights`: a LossResult with
    the mean -log sigmoid(beta ((lp_c - ref_c) - (lp_r - ref_r))), the
    metrics dpo_loss, accuracy, margin, chosen_reward, rejected_reward, and
    dloss/dlogprobs. logprobs, ref_logprobs: one float32 array per datum."""
    datums = Datums(data)
    shapes = [datums.targets_shape(i) for i in range(datums.n)]
    views = float_arrays(logprobs, "logprobs", shapes)
    refs = float_arrays(ref_logprobs, "ref_logprobs", shapes)
    ref_ptrs = ffi.new("float *[]", [ffi.cast("float *", v.ptr) for v in refs] or [ffi.NULL])
    dpo = ffi.new("tl_dpo *", {"beta": _float(beta, "beta"), "ref_logprobs": ref_ptrs})
    grads, g_ptrs = _grads(views)
    loss, metrics, err = ffi.new("double *"), ffi.new("tl_metrics *"), _err()
    check(lib.tl_dpo_loss(dpo, datums.c, datums.n, _ptrs(views), loss, g_ptrs, metrics, err),
          err)
    return LossResult(float(loss[0]), metrics_dict(metrics), grads)


def mean_nll(data, logprobs):
    """The SFT mean NLL (supervised/common.py, compute_mean_nll): a
    LossResult with -sum(w lp) / sum(w) over every token of every datum (NaN
    when the weights sum to 0) and its gradient -w / sum(w)."""
    datums = Datums(data)
    shapes = [datums.targets_shape(i) for i in range(datums.n)]
    views = float_arrays(logprobs, "logprobs", shapes)
    grads, g_ptrs = _grads(views)
    nll, err = ffi.new("double *"), _err()
    check(lib.tl_mean_nll(datums.c, datums.n, _ptrs(views), nll, g_ptrs, err), err)
    return LossResult(float(nll[0]), {}, grads)


class KL(tuple):
    """kl_estimate's result: (values, grad, total)."""

    __slots__ = ()

    def __new__(cls, values, grad, total):
        return super().__new__(cls, (values, grad, total))

    values = property(lambda self: self[0])
    grad = property(lambda self: self[1])
    total = property(lambda self: self[2])


_ESTIMATORS = {"k1": 1, "k2": 2, "k3": 3}


def _flat(x, name: str, *, writable: bool = False, n: int | None = None):
    v = view(x, name, (F32,), writable=writable)
    if not _packed(v):
        raise fail(Status.ERR_SIZE, name, f"{name} is not contiguous; pass .contiguous() "
                   "(torch) or np.ascontiguousarray (numpy)")
    size = int(np.prod(v.shape))
    if n is not None and size != n:
        raise fail(Status.ERR_SHAPE, name, f"{name} has {size} values, expected {n}")
    return v, size


def _float(x, name: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        raise fail(Status.ERR_VALUE, name, f"{name} is {x!r}, expected a number") from None


def kl_estimate(logprobs, ref_logprobs, estimator="k3"):
    """Per-token KL estimates between the policy's logprobs and a
    reference's (float32 arrays of one shape): k1 = lp - ref,
    k2 = (lp - ref)^2 / 2, k3 = exp(ref - lp) - (ref - lp) - 1. Returns
    KL(values, grad = d/dlogprobs, total = the sum, in double)."""
    code = _ESTIMATORS.get(estimator)
    if code is None:
        raise fail(Status.ERR_CONFIG, "estimator", f"estimator {estimator!r}: expected "
                   "'k1', 'k2' or 'k3'")
    lv, n = _flat(logprobs, "logprobs")
    rv, _ = _flat(ref_logprobs, "ref_logprobs", n=n)
    values, grad = new(lv.kind, lv.shape, F32), new(lv.kind, lv.shape, F32)
    total, err = ffi.new("double *"), _err()
    check(lib.tl_kl_estimate(code, ffi.cast("float *", lv.ptr), ffi.cast("float *", rv.ptr), n,
                             ffi.cast("float *", view(values, "values", (F32,)).ptr),
                             ffi.cast("float *", view(grad, "grad", (F32,)).ptr), total, err),
          err)
    return KL(values, grad, float(total[0]))


def _kl_seqs(logprobs, ref, advantages, mask, ref_name):
    """tl_kl_seq[] over per-sequence arrays (advantages written in place)."""
    seqs = (logprobs, ref, advantages) + ((mask,) if mask is not None else ())
    if any(not isinstance(s, Sequence) for s in seqs) or len({len(s) for s in seqs}) != 1:
        raise fail(Status.ERR_SHAPE, "logprobs", f"logprobs, {ref_name}, advantages"
                   f"{' and mask' if mask is not None else ''} must be lists of one array per "
                   "sequence, of the same length")
    c = ffi.new("tl_kl_seq[]", max(len(logprobs), 1))
    keep = []
    for i in range(len(logprobs)):
        q, n = _flat(logprobs[i], f"logprobs[{i}]")
        r, _ = _flat(ref[i], f"{ref_name}[{i}]", n=n)
        a, _ = _flat(advantages[i], f"advantages[{i}]", writable=True, n=n)
        m = _flat(mask[i], f"mask[{i}]", n=n)[0] if mask is not None else None
        keep += [q, r, a, m]
        c[i].n = n
        c[i].logprobs, c[i].ref_logprobs = ffi.cast("float *", q.ptr), ffi.cast("float *", r.ptr)
        c[i].advantages = ffi.cast("float *", a.ptr)
        c[i].mask = ffi.cast("float *", m.ptr) if m is not None else ffi.NULL
    return c, keep


def kl_penalty(logprobs, ref_logprobs, advantages, mask=None, *, coef, discount=0.0):
    """The cookbook's KL penalty (rl/metrics.py, incorporate_kl_penalty)
    over a batch, folded into `advantages` in place: d = (q - ref) mask,
    avg = sum(d) / sum(mask), A += coef mask (avg - d), discounted
    backwards per sequence when discount > 0. Each argument is a list of
    float32 arrays, one per sequence (mask: 1 on action tokens; None: all
    1). Returns avg."""
    c, _keep = _kl_seqs(logprobs, ref_logprobs, advantages, mask, "ref_logprobs")
    avg, err = ffi.new("double *"), _err()
    check(lib.tl_kl_penalty(c, len(logprobs), _float(coef, "coef"),
                            _float(discount, "discount"), avg, err), err)
    return float(avg[0])


def distillation_advantages(logprobs, teacher_logprobs, advantages, mask=None, *, coef,
                            discount=0.0):
    """On-policy distillation (distillation/train_on_policy.py,
    incorporate_kl_penalty): A += -coef mask (q - teacher) mask in place,
    discounted backwards when discount > 0, no mean subtracted. Lists of
    float32 arrays as kl_penalty. Returns the cookbook's teacher_kl,
    sum((q - teacher) mask) / sum(mask) (NaN when the mask is all 0)."""
    c, _keep = _kl_seqs(logprobs, teacher_logprobs, advantages, mask, "teacher_logprobs")
    kl, err = ffi.new("double *"), _err()
    check(lib.tl_distillation_advantages(c, len(logprobs), _float(coef, "coef"),
                                         _float(discount, "discount"), kl, err), err)
    return float(kl[0])


def group_advantages(rewards):
    """rewards - mean(rewards) (mean in double, no std), float32; rewards a
    float32 array or a list of numbers."""
    if isinstance(rewards, (list, tuple)):
        rewards = np.asarray(rewards, dtype=np.float32)
    rv, n = _flat(rewards, "rewards")
    adv = new(rv.kind, rv.shape, F32)
    err = _err()
    check(lib.tl_group_advantages(ffi.cast("float *", rv.ptr), n,
                                  ffi.cast("float *", view(adv, "adv", (F32,)).ptr), err), err)
    return adv


def _ints(x, name: str):
    a = np.ascontiguousarray(x, dtype=np.int64) if not isinstance(x, np.ndarray) or \
        x.dtype != np.int64 else np.ascontiguousarray(x)
    if a.ndim != 1:
        raise fail(Status.ERR_SHAPE, name, f"{name} has {a.ndim} dimensions, expected 1")
    return a


def _floats(x, name: str):
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 1:
        raise fail(Status.ERR_SHAPE, name, f"{name} has {a.ndim} dimensions, expected 1")
    return a


def _datum_of(buf) -> dict:
    """A library-built datum as a wire-shape dict with numpy arrays (copied
    out of the library's buffers, which are then freed by the caller)."""
    n = int(buf.n)

    def arr(ptr, dtype):
        return np.frombuffer(ffi.buffer(ptr, n * np.dtype(dtype).itemsize), dtype).copy()

    tokens = arr(buf.input_tokens, np.int64)
    return {"model_input": {"chunks": [{"type": "encoded_text", "tokens": tokens.tolist()}]},
            "loss_fn_inputs": {"target_tokens": arr(buf.target_tokens, np.int64),
                               "logprobs": arr(buf.logprobs, np.float32),
                               "advantages": arr(buf.advantages, np.float32),
                               "mask": arr(buf.mask, np.float32)}}


def datum_from_sample(prompt, response, response_logprobs, advantage):
    """A single-turn sample as a datum dict (the wire shape, numpy arrays):
    model input prompt + response[:-1], targets shifted by one, the
    advantage and the sampler logprobs on the response (0 on the prompt),
    and the cookbook's mask (1 on the response)."""
    p, r = _ints(prompt, "prompt"), _ints(response, "response")
    q = _floats(response_logprobs, "response_logprobs")
    s = ffi.new("tl_sample *", {"prompt": ffi.cast("int64_t *", p.ctypes.data),
                                "prompt_len": p.size,
                                "response": ffi.cast("int64_t *", r.ctypes.data),
                                "response_len": r.size,
                                "response_logprobs": ffi.cast("float *", q.ctypes.data),
                                "response_logprobs_len": q.size})
    buf, err = ffi.new("tl_datum_buf *"), _err()
    check(lib.tl_datum_from_sample(s, _float(advantage, "advantage"), buf, err), err)
    try:
        return _datum_of(buf)
    finally:
        lib.tl_datum_buf_free(buf)


def _turn_field(turn, name: str, i: int, default=None):
    if isinstance(turn, Mapping):
        value = turn.get(name, default)
    else:
        value = getattr(turn, name, default)
    if value is None and default is None:
        raise fail(Status.ERR_MISSING, f"turns[{i}].{name}", f"turns[{i}] has no {name}")
    return value


def datums_from_trajectory(turns, advantage):
    """A multi-turn trajectory as datum dicts, by the cookbook's rule
    (rl/data_processing.py, trajectory_to_data): a running sequence grows by
    each observation's new tokens (mask 0) and its action (mask 1, the
    advantage, the sampler logprobs); an observation that does not extend
    it starts a new datum. Each turn is a mapping or object with
    `observation`, `action`, `action_logprobs` (token lists or arrays) and
    optionally `masked` (True: an action that failed to parse, mask and
    advantage 0)."""
    if not isinstance(turns, Sequence):
        raise fail(Status.ERR_VALUE, "turns", f"turns is {_describe(turns)}, expected a list")
    c = ffi.new("tl_turn[]", max(len(turns), 1))
    keep = []
    for i, t in enumerate(turns):
        o = _ints(_turn_field(t, "observation", i), f"turns[{i}].observation")
        a = _ints(_turn_field(t, "action", i), f"turns[{i}].action")
        q = _floats(_turn_field(t, "action_logprobs", i), f"turns[{i}].action_logprobs")
        keep += [o, a, q]
        c[i].observation, c[i].observation_len = ffi.cast("int64_t *", o.ctypes.data), o.size
        c[i].action, c[i].action_len = ffi.cast("int64_t *", a.ctypes.data), a.size
        c[i].action_logprobs = ffi.cast("float *", q.ctypes.data)
        c[i].action_logprobs_len = q.size
        c[i].masked = 1 if _turn_field(t, "masked", i, False) else 0
    out, nd, err = ffi.new("tl_datum_buf **"), ffi.new("int64_t *"), _err()
    check(lib.tl_datums_from_trajectory(c, len(turns), _float(advantage, "advantage"), out, nd,
                                        err), err)
    try:
        return [_datum_of(out[0][i]) for i in range(nd[0])]
    finally:
        lib.tl_datum_bufs_free(out[0], nd[0])

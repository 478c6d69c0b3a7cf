#!/usr/bin/python3
"""Generate the golden fixtures of tinkerloss (format tinkerloss.golden.v1).

Every expected value is computed in float64 with PyTorch autograd on the
reference formulas of the Tinker losses. Inputs are float32 (or bfloat16)
values, so the C side sees exactly the numbers used here. Randomness comes
from a small deterministic generator below (not numpy's or torch's), and
torch runs on one thread, so regenerating reproduces the committed files
byte for byte:

    /usr/bin/python3 golden/generate.py            # rewrite golden/*.json
    /usr/bin/python3 golden/generate.py --check    # compare, write nothing

Needs Debian's python3-torch and python3-numpy.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))
FORMAT = "tinkerloss.golden.v1"


# ---- deterministic random numbers (splitmix64) ------------------------------

class Rng:
    def __init__(self, seed):
        self.s = seed & (2**64 - 1)

    def u64(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & (2**64 - 1)
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
        return z ^ (z >> 31)

    def uniform(self):
        return (self.u64() >> 11) * 2.0**-53

    def normal(self):
        u = max(self.uniform(), 1e-300)
        return math.sqrt(-2.0 * math.log(u)) * math.cos(2 * math.pi * self.uniform())

    def int(self, n):
        return self.u64() % n


def f32(x):
    """Round to float32 (as a Python float)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def bf16(x):
    """Round to bfloat16, nearest even (as a Python float)."""
    b = struct.unpack("<I", struct.pack("<f", x))[0]
    if (b & 0x7FFFFFFF) > 0x7F800000:
        return x
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return struct.unpack("<f", struct.pack("<I", b))[0]


def quant(x, step):
    """A float32 value on a grid of `step` (short decimal forms)."""
    return f32(round(x / step) * step)


# ---- JSON values -------------------------------------------------------------

def short32(v):
    """Shortest decimal that reads back as the same float32, or a string
    for the non-finite values."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    s = np.format_float_positional(np.float32(v), unique=True, trim="-")
    d = float(s)
    return d if f32(d) == v else v


def exact64(v):
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


def tensor(values, dtype, shape=None, expected=False):
    flat = list(np.asarray(values, dtype=np.float64).reshape(-1)) \
        if dtype != "int64" else [int(v) for v in np.asarray(values).reshape(-1)]
    if dtype == "int64":
        data = flat
    elif expected:
        data = [exact64(float(v)) for v in flat]
    else:
        data = [short32(float(v)) for v in flat]
    return {"data": data, "dtype": dtype,
            "shape": list(shape) if shape is not None else None}


# ---- the reference losses in float64 with autograd ---------------------------

DEFAULTS = {"ppo": (0.8, 1.2), "cispo": (0.0, 4.0)}


def thresholds(fn, config, inputs, like):
    lo, hi = DEFAULTS[fn]
    lo = (config or {}).get("clip_low_threshold", lo)
    hi = (config or {}).get("clip_high_threshold", hi)
    lo_t = torch.full_like(like, lo)
    hi_t = torch.full_like(like, hi)
    if "clip_low_threshold" in inputs:
        lo_t = torch.tensor(inputs["clip_low_threshold"], dtype=torch.float64)
    if "clip_high_threshold" in inputs:
        hi_t = torch.tensor(inputs["clip_high_threshold"], dtype=torch.float64)
    return lo_t, hi_t


def loss_terms(fn, config, lp, inputs):
    if fn == "cross_entropy":
        w = torch.tensor(inputs["weights"], dtype=torch.float64).reshape(lp.shape)
        return -(w * lp)
    q = torch.tensor(inputs["logprobs"], dtype=torch.float64).reshape(lp.shape)
    a = torch.tensor(inputs["advantages"], dtype=torch.float64).reshape(lp.shape)
    r = torch.exp(lp - q)
    if fn == "importance_sampling":
        return -(r * a)
    if fn == "dro":
        beta = config["beta"]
        return -(lp * a - 0.5 * beta * (lp - q) ** 2)
    lo, hi = thresholds(fn, config, inputs, q)
    clipped = torch.clamp(r, min=lo, max=hi)
    if fn == "ppo":
        return -torch.min(r * a, clipped * a)
    return -(clipped.detach() * lp * a)  # cispo


def metrics_of(fn, config, datums, lps, ents, extra):
    """loss:sum always; the diagnostics the library reports if `extra`."""
    out = {}
    total = 0.0
    for d, lp in zip(datums, lps):
        total += float(loss_terms(fn, config, lp.detach(), d["inputs"]).sum())
    out["loss:sum"] = total
    if not extra:
        return out
    ntok = sum(lp.numel() for lp in lps)
    out["tokens:sum"] = float(ntok)
    if fn != "cross_entropy":
        rs, k1, k2, qsum, clipped = [], 0.0, 0.0, 0.0, 0
        for d, lp in zip(datums, lps):
            q = torch.tensor(d["inputs"]["logprobs"], dtype=torch.float64)
            # the library's loss and metrics see the returned float32 logprobs
            lpd = lp.detach().reshape(-1).to(torch.float32).to(torch.float64)
            # the tokens the cookbook's compute_kl_sample_train counts
            # (rl/metrics.py): mask > 0; without a mask, the sampled ones
            # (q != 0: prompt padding has q = 0)
            if "mask" in d["inputs"]:
                sampled = torch.tensor(d["inputs"]["mask"]) > 0
            else:
                sampled = q != 0
            r = torch.exp(lpd - q)[sampled]
            rs += r.tolist()
            diff = (q - lpd)[sampled]
            k1 += float(diff.sum())
            k2 += float((0.5 * diff * diff).sum())
            qsum += float(q[sampled].sum())
            if fn in DEFAULTS:
                lo, hi = thresholds(fn, config, d["inputs"], q)
                clipped += int(((r < lo[sampled]) | (r > hi[sampled])).sum())
        if rs:
            n = len(rs)
            out["ratio:mean"] = sum(rs) / n
            out["ratio:min"] = min(rs)
            out["ratio:max"] = max(rs)
            out["kl_sample_train_v1:mean"] = k1 / n
            out["kl_sample_train_v2:mean"] = k2 / n
            out["sampler_entropy:mean"] = -qsum / n
            if fn in DEFAULTS:
                out["clip_fraction:mean"] = clipped / n
    if ents is not None:
        allh = torch.cat(ents)
        out["entropy:mean"] = float(allh.mean())
    return out


def make_case(name, fn, config, datums, logits=None, temperature=1.0,
              logits_dtype="float32", extra=False, grad_logits=True,
              grad_logprobs=True, tolerance=None, head=None):
    """datums: [{"full": tokens or None, "input": [...], "targets": [...],
    "k": K, "inputs": {key: list}, "lp": float32 logprobs (no logits)}]
    head: {"hidden": [[N_i, d] per datum], "weight": [V, d], "bias": [V] or
    None}: the logits are hidden @ weight^T + bias, and the gradients are
    those of the hidden states, weight and bias."""
    lps, ents, leaves = [], [], []
    if head is not None:
        hw = torch.tensor(np.asarray(head["weight"], dtype=np.float64),
                          requires_grad=True)
        hb = None if head["bias"] is None else torch.tensor(
            np.asarray(head["bias"], dtype=np.float64), requires_grad=True)
        hs = [torch.tensor(np.asarray(h, dtype=np.float64).reshape(-1, hw.shape[1]),
                           requires_grad=True) for h in head["hidden"]]
        logits = [h @ hw.T + (hb if hb is not None else 0.0) for h in hs]
    for i, d in enumerate(datums):
        if logits is not None:
            if head is not None:
                x = logits[i]
            else:
                x = torch.tensor(np.asarray(logits[i], dtype=np.float64),
                                 requires_grad=True)
            leaves.append(x)
            logp = torch.log_softmax(x / temperature, dim=-1)
            t = torch.tensor(d["targets"], dtype=torch.int64).reshape(len(x), -1)
            lp = logp.gather(1, t)
            if d.get("k", 0) == 0:
                lp = lp.reshape(-1)
            p = torch.exp(logp)
            h = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
            ents.append(h.detach())
        else:
            lp = torch.tensor(d["lp"], dtype=torch.float64)
        lp.retain_grad() if lp.requires_grad else lp.requires_grad_(True)
        lps.append(lp)
    total = sum(loss_terms(fn, config, lp, d["inputs"]).sum()
                for d, lp in zip(datums, lps))
    total.backward()
    data = []
    for d in datums:
        k = d.get("k", 0)
        n = len(d["targets"]) // max(k, 1)
        shape = [n, k] if k else None
        inputs = {"target_tokens": tensor(d["targets"], "int64", shape)}
        for key, vals in d["inputs"].items():
            per_pos = key.startswith("clip_")
            inputs[key] = tensor(vals, "float32", None if per_pos else shape)
        data.append({"model_input": {"chunks": [
            {"type": "encoded_text", "tokens": [int(v) for v in d["input"]]}]},
            "loss_fn_inputs": inputs})
    expected = {
        "loss_fn_outputs": [
            {"logprobs": tensor(lp.detach().reshape(-1).tolist(), "float32",
                                [len(d["targets"]) // d["k"], d["k"]]
                                if d.get("k", 0) else None,
                                expected=logits is not None)}
            for d, lp in zip(datums, lps)],
        "metrics": metrics_of(fn, config, datums, lps,
                              ents if (logits is not None and extra) else None,
                              extra),
    }
    if grad_logprobs:
        expected["grad_logprobs"] = [
            tensor(lp.grad.reshape(-1).tolist(), "float32", None, expected=True)
            for lp in lps]
    if head is not None:
        expected["grad_hidden"] = [
            tensor(h.grad.reshape(-1).tolist(), "float32", list(h.shape),
                   expected=True) for h in hs]
        expected["grad_lm_head"] = tensor(hw.grad.reshape(-1).tolist(), "float32",
                                          list(hw.shape), expected=True)
        if hb is not None:
            expected["grad_lm_head_bias"] = tensor(hb.grad.tolist(), "float32",
                                                   list(hb.shape), expected=True)
    elif logits is not None and grad_logits:
        expected["grad_logits"] = [
            tensor(x.grad.reshape(-1).tolist(), "float32", list(x.shape),
                   expected=True) for x in leaves]
    case = {"name": name, "loss_fn": fn, "loss_fn_config": config, "data": data}
    if head is not None:
        case["hidden"] = [tensor(h.detach().reshape(-1).tolist(), "float32",
                                 list(h.shape)) for h in hs]
        case["lm_head"] = tensor(hw.detach().reshape(-1).tolist(), "float32",
                                 list(hw.shape))
        if hb is not None:
            case["lm_head_bias"] = tensor(hb.detach().tolist(), "float32",
                                          list(hb.shape))
        case["temperature"] = temperature
    elif logits is not None:
        case["logits"] = [tensor(np.asarray(l).reshape(-1), logits_dtype,
                                 list(np.asarray(l).shape)) for l in logits]
        case["temperature"] = temperature
    case["expected"] = expected
    if tolerance:
        case["tolerance"] = tolerance
    return case


# ---- inputs ------------------------------------------------------------------

def random_logits(rng, n, v, sd=3.0, step=1.0 / 1024, rounder=f32):
    return [[rounder(quant(sd * rng.normal(), step)) for _ in range(v)]
            for _ in range(n)]


def true_logprobs(logits, targets, temperature=1.0):
    x = torch.tensor(np.asarray(logits, dtype=np.float64)) / temperature
    lp = torch.log_softmax(x, -1)
    return [float(lp[i, t]) for i, t in enumerate(targets)]


def rl_inputs(rng, fn, lp_true, config=None, ratios=(0.6, 0.9, 1.0, 1.1, 1.6)):
    """Sampler logprobs at chosen ratios from the true ones, advantages with
    zeros and negatives; weights for cross_entropy."""
    n = len(lp_true)
    if fn == "cross_entropy":
        return {"weights": [f32(quant(rng.uniform(), 1.0 / 64)) for _ in range(n)]}
    q = [f32(lp - math.log(ratios[rng.int(len(ratios))])) for lp in lp_true]
    a = [0.0 if i % 4 == 3 else f32(quant(rng.normal(), 1.0 / 64)) for i in range(n)]
    return {"logprobs": q, "advantages": a}


def datum_for(rng, fn, logits, config=None, temperature=1.0, targets=None):
    n, v = len(logits), len(logits[0])
    if targets is None:
        targets = [rng.int(v) for _ in range(n)]
    full = [rng.int(v)] + targets
    lp = true_logprobs(logits, targets, temperature)
    return {"input": full[:-1], "targets": targets,
            "inputs": rl_inputs(rng, fn, lp, config)}


LOSSES = ["cross_entropy", "importance_sampling", "ppo", "cispo", "dro"]
CUSTOM = {"cross_entropy": None, "importance_sampling": None,
          "ppo": {"clip_low_threshold": 0.7, "clip_high_threshold": 1.5},
          "cispo": {"clip_low_threshold": 0.5, "clip_high_threshold": 2.0},
          "dro": {"beta": 0.2}}


def losses_file():
    cases = []
    for li, fn in enumerate(LOSSES):
        for custom in (0, 1):
            rng = Rng(1000 + 10 * li + custom)
            config = CUSTOM[fn] if custom else ({"beta": 0.05} if fn == "dro" else None)
            if custom and config is None:
                continue
            logits = [random_logits(rng, 6, 40), random_logits(rng, 3, 40)]
            datums = [datum_for(rng, fn, l, config) for l in logits]
            cases.append(make_case(f"{fn}_{'custom' if custom else 'default'}_config",
                                   fn, config, datums, logits, extra=True))
    return cases


def boundaries_file():
    cases = []
    rng = Rng(2000)
    # r == 1 exactly (lp == q) against thresholds of exactly 1: ties of
    # torch.min and the closed interval of clamp; A == 0; negative A
    for fn in ("ppo", "cispo"):
        lp = [f32(-0.5 - rng.uniform()) for _ in range(8)]
        q = list(lp)
        a = [1.5, -1.5, 0.0, 2.0, -2.0, 0.75, -0.25, 0.0]
        lo = [1.0, 1.0, 1.0, 0.5, 0.5, 1.0, 0.9, 0.8]
        hi = [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.2]
        d = {"input": [3] * 8, "targets": [3] * 8, "lp": lp,
             "inputs": {"logprobs": q, "advantages": a,
                        "clip_low_threshold": lo, "clip_high_threshold": hi}}
        cases.append(make_case(f"{fn}_ratio_one_on_per_token_bounds", fn, None, [d],
                               extra=True))
    # ratios clearly inside / outside the config bounds with both signs of A
    for fn, cfg in (("ppo", None), ("ppo", {"clip_low_threshold": 0.9,
                                            "clip_high_threshold": 1.1}),
                    ("cispo", None), ("cispo", {"clip_high_threshold": 1.3}),
                    ("importance_sampling", None), ("dro", {"beta": 0.1})):
        ratios = [0.5, 0.85, 1.0, 1.05, 1.25, 2.0, 5.0]
        lp, q, a = [], [], []
        for i, r in enumerate(ratios * 2):
            x = f32(-1.0 - 2 * rng.uniform())
            lp.append(x)
            q.append(x if r == 1.0 else f32(x - math.log(r)))
            a.append(0.0 if i == 3 else (1.0 if i < 7 else -1.0) * f32(0.5 + rng.uniform()))
        d = {"input": [2] * 14, "targets": [2] * 14, "lp": lp,
             "inputs": {"logprobs": q, "advantages": a}}
        tag = "custom" if cfg else "default"
        cases.append(make_case(f"{fn}_{tag}_ratios_both_signs", fn, cfg, [d],
                               extra=True))
    # cross_entropy verification with zero and fractional weights
    lp = [f32(-3 * rng.uniform()) for _ in range(9)]
    w = [0.0, 1.0, 0.5, 0.0, 1.0, 0.25, 1.0, 0.0, 2.0]
    cases.append(make_case("cross_entropy_weights_verification", "cross_entropy", None,
                           [{"input": [5] * 9, "targets": [5] * 9, "lp": lp,
                             "inputs": {"weights": w}}], extra=True))
    return cases


def shapes_file():
    cases = []
    # (N, K) targets
    for fn in ("cross_entropy", "importance_sampling"):
        rng = Rng(3000 + len(fn))
        n, k, v = 4, 3, 30
        logits = [random_logits(rng, n, v)]
        targets = [rng.int(v) for _ in range(n * k)]
        targets[1] = targets[0]  # a repeated target
        x = torch.log_softmax(torch.tensor(np.asarray(logits[0], dtype=np.float64)), -1)
        lp = [float(x[i, targets[i * k + j]]) for i in range(n) for j in range(k)]
        d = {"input": [0] * n, "targets": targets, "k": k,
             "inputs": rl_inputs(rng, fn, lp)}
        cases.append(make_case(f"{fn}_n_by_k_targets", fn, None, [d], logits,
                               extra=True))
    # ragged multi-datum batch
    rng = Rng(3100)
    logits = [random_logits(rng, n, 50) for n in (1, 9, 4, 2)]
    datums = [datum_for(rng, "ppo", l) for l in logits]
    cases.append(make_case("ppo_ragged_batch_of_four", "ppo", None, datums, logits,
                           extra=True))
    # vocabulary sizes from 1 to 151,936
    for v, n, grads in ((1, 3, True), (2, 2, True), (7, 5, True), (31, 4, True),
                        (1000, 2, True), (32000, 2, False), (151936, 1, False)):
        rng = Rng(3200 + v)
        logits = [random_logits(rng, n, v, step=1.0 / 16)]
        datums = [datum_for(rng, "importance_sampling", logits[0])]
        cases.append(make_case(f"importance_sampling_vocab_{v}", "importance_sampling",
                               None, datums, logits, grad_logits=grads))
    return cases


def numerics_file():
    cases = []
    # masked vocabulary: -inf logits
    rng = Rng(4000)
    logits = random_logits(rng, 5, 64)
    for i, row in enumerate(logits):
        for j in range(64):
            if (j + i) % 3 == 0:
                row[j] = -math.inf
    targets = []
    for row in logits:
        j = rng.int(64)
        while row[j] == -math.inf:
            j = (j + 1) % 64
        targets.append(j)
    datums = [datum_for(rng, "ppo", logits, targets=targets)]
    cases.append(make_case("ppo_masked_vocabulary_neg_inf", "ppo", None, datums,
                           [logits], extra=True))
    # large magnitudes
    rng = Rng(4100)
    logits = [[quant(200 * rng.uniform() - 100, 1.0 / 64) for _ in range(300)]
              for _ in range(4)]
    datums = [datum_for(rng, "cross_entropy", logits)]
    cases.append(make_case("cross_entropy_logits_up_to_100", "cross_entropy", None,
                           datums, [logits]))
    # temperatures
    for t in (0.7, 2.0):
        rng = Rng(4200 + int(10 * t))
        logits = [random_logits(rng, 5, 80)]
        datums = [datum_for(rng, "importance_sampling", logits[0], temperature=t)]
        cases.append(make_case(f"importance_sampling_temperature_{t}",
                               "importance_sampling", None, datums, logits,
                               temperature=t, extra=True))
    # bfloat16 logits
    for fn in ("ppo", "cross_entropy"):
        rng = Rng(4300 + len(fn))
        logits = [random_logits(rng, 6, 96, rounder=bf16)]
        datums = [datum_for(rng, fn, logits[0])]
        cases.append(make_case(f"{fn}_bfloat16_logits", fn, None, datums, logits,
                               logits_dtype="bfloat16", extra=True))
    return cases


def sequences_file():
    """The seed's patterns: full = prompt + response, input = full[:-1],
    target = full[1:], advantages [0] * (P - 1) + [A] * R, sampler logprobs
    padded with 0 the same way; a multi-turn datum."""
    cases = []
    rng = Rng(5000)
    v = 48
    datums, logits = [], []
    for prompt_len, resp_len, adv in ((5, 4, 0.75), (3, 6, -0.5), (1, 3, 1.25)):
        full = [rng.int(v) for _ in range(prompt_len + resp_len)]
        x = random_logits(rng, len(full) - 1, v)
        lp = true_logprobs(x, full[1:])
        resp_q = [f32(l + 0.1 * rng.normal()) for l in lp[prompt_len - 1:]]
        datums.append({"input": full[:-1], "targets": full[1:], "inputs": {
            "logprobs": [0.0] * (prompt_len - 1) + resp_q,
            "advantages": [0.0] * (prompt_len - 1) + [adv] * resp_len}})
        logits.append(x)
    for fn in ("importance_sampling", "ppo", "dro"):
        cfg = {"beta": 0.05} if fn == "dro" else None
        cases.append(make_case(f"{fn}_single_turn_shift_and_padding", fn, cfg,
                               datums, logits, extra=True))
    # multi-turn: observation tokens get advantage 0 and logprob 0
    ob1, ac1, ob2, ac2 = [1, 2, 3], [4, 5], [6, 7], [8, 9, 10]
    full = ob1 + ac1 + ob2 + ac2
    mask = [0] * 3 + [1] * 2 + [0] * 2 + [1] * 3
    x = random_logits(rng, len(full) - 1, 12)
    lp = true_logprobs(x, full[1:])
    q = [f32(l + 0.05 * rng.normal()) if m else 0.0 for l, m in zip(lp, mask[1:])]
    a = [0.6 if m else 0.0 for m in mask[1:]]
    d = {"input": full[:-1], "targets": full[1:], "inputs": {"logprobs": q, "advantages": a}}
    cases.append(make_case("ppo_multi_turn_observation_action", "ppo", None, [d], [x],
                           extra=True))
    # the cookbook's client-side mask: a turn whose action failed to parse
    # keeps its sampler logprobs but has mask 0 and advantage 0
    # (rl/data_processing.py, trajectory_to_data), and a discounted KL
    # penalty against a reference model (rl/metrics.py,
    # incorporate_kl_penalty, in float32 as there) spreads non-zero
    # advantages into the observation positions: the sampler/trainer
    # metrics count the tokens with mask > 0 only (compute_kl_sample_train)
    ob3, ac3 = [11, 3], [2, 7]
    full = ob1 + ac1 + ob2 + ac2 + ob3 + ac3
    mask = [0] * 3 + [1] * 2 + [0] * 2 + [1] * 3 + [0] * 2 + [0] * 2
    parse_error = [0] * 12 + [1] * 2
    x = random_logits(rng, len(full) - 1, 12)
    lp = true_logprobs(x, full[1:])
    q = [f32(l + 0.05 * rng.normal()) if m or e else 0.0
         for l, m, e in zip(lp, mask[1:], parse_error[1:])]
    ref = [f32(l + 0.2 * rng.normal()) for l in lp]
    m = torch.tensor(mask[1:], dtype=torch.float32)
    dkl = (torch.tensor(q) - torch.tensor(ref)) * m
    avg = dkl.sum() / m.sum()
    pen = 0.4 * m * (avg - dkl)
    for t in range(len(pen) - 2, -1, -1):
        pen[t] = pen[t] + 0.9 * pen[t + 1]
    a = (torch.tensor([0.6 if mm else 0.0 for mm in mask[1:]]) + pen).tolist()
    assert any(av != 0 and mm == 0 for av, mm in zip(a, mask[1:]))
    d = {"input": full[:-1], "targets": full[1:],
         "inputs": {"logprobs": q, "advantages": [f32(v) for v in a],
                    "mask": [float(mm) for mm in mask[1:]]}}
    for fn in ("importance_sampling", "ppo"):
        cases.append(make_case(f"{fn}_mask_kl_penalty_and_parse_error", fn,
                               None, [d], [x], extra=True))
    return cases


def head_file():
    """Hidden states through an output projection (lm_head) in place of
    logits: every loss, a bias or none, a temperature, (N, K) targets, a
    vocabulary larger than one block of the library's sgemm chunks."""
    cases = []

    def head_inputs(rng, ns, v, d, bias):
        ws = 3.0 / math.sqrt(d)
        hidden = [[[quant(rng.normal(), 1.0 / 256) for _ in range(d)]
                   for _ in range(n)] for n in ns]
        weight = [[quant(ws * rng.normal(), 1.0 / 1024) for _ in range(d)]
                  for _ in range(v)]
        b = [quant(0.5 * rng.normal(), 1.0 / 256) for _ in range(v)] if bias else None
        return {"hidden": hidden, "weight": weight, "bias": b}

    def head_logits(h):
        w = np.asarray(h["weight"], dtype=np.float64)
        b = 0.0 if h["bias"] is None else np.asarray(h["bias"], dtype=np.float64)
        return [(np.asarray(x, dtype=np.float64) @ w.T + b).tolist() for x in h["hidden"]]

    for li, fn in enumerate(LOSSES):
        rng = Rng(6000 + li)
        config = CUSTOM[fn] if fn in ("ppo", "dro") else None
        h = head_inputs(rng, (5, 3), 41, 12, bias=li % 2 == 0)
        datums = [datum_for(rng, fn, x, config) for x in head_logits(h)]
        cases.append(make_case(f"{fn}_lm_head", fn, config, datums, head=h,
                               extra=True))
    rng = Rng(6100)
    h = head_inputs(rng, (4,), 29, 8, bias=True)
    datums = [datum_for(rng, "importance_sampling", x, temperature=1.5)
              for x in head_logits(h)]
    cases.append(make_case("importance_sampling_lm_head_temperature_1.5",
                           "importance_sampling", None, datums, temperature=1.5,
                           head=h, extra=True))
    rng = Rng(6200)
    n, k, v = 3, 4, 33
    h = head_inputs(rng, (n,), v, 10, bias=False)
    targets = [rng.int(v) for _ in range(n * k)]
    targets[5] = targets[4]  # a repeated target
    x = torch.log_softmax(torch.tensor(head_logits(h)[0]), -1)
    lp = [float(x[i, targets[i * k + j]]) for i in range(n) for j in range(k)]
    d = {"input": [0] * n, "targets": targets, "k": k,
         "inputs": rl_inputs(rng, "cross_entropy", lp)}
    cases.append(make_case("cross_entropy_lm_head_n_by_k_targets", "cross_entropy",
                           None, [d], head=h, extra=True))
    rng = Rng(6300)
    h = head_inputs(rng, (2, 1), 2500, 6, bias=True)
    datums = [datum_for(rng, "ppo", x) for x in head_logits(h)]
    cases.append(make_case("ppo_lm_head_vocab_2500", "ppo", None, datums, head=h,
                           extra=True))
    return cases


# ---- the cookbook's objectives around the losses -----------------------------

def objectives_file():
    """DPO over chosen/rejected pairs (preference/train_dpo.py,
    compute_dpo_loss with the weighted sequence logprobs of dpo_loss_fn),
    on-policy distillation advantages (distillation/train_on_policy.py,
    incorporate_kl_penalty) and the SFT mean NLL (supervised/common.py,
    compute_mean_nll), in float64 with autograd. Inputs are float32 values;
    a NaN expectation is written as null."""
    rng = Rng(7000)
    cases = []

    def seq(n, scale=2.0):
        return [f32(-abs(scale * rng.normal())) for _ in range(n)]

    def weights(n, first):
        return [0.0] * first + [1.0] * (n - first)

    for name, beta, npairs, tie in (("dpo_three_pairs", 0.1, 3, False),
                                    ("dpo_beta_half_with_tie", 0.5, 2, True),
                                    ("dpo_saturated", 40.0, 2, False)):
        lens = [2 + rng.int(8) for _ in range(2 * npairs)]
        lps = [seq(n) for n in lens]
        refs = [seq(n) for n in lens]
        ws = [weights(n, rng.int(n)) for n in lens]
        ws[0][-1] = 0.5  # fractional weights take part in the dot product
        if tie:  # identical pair: c == r, which accuracy counts as wrong
            lens[3], lps[3], refs[3], ws[3] = lens[2], lps[2], refs[2], ws[2]
        lp_t = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in lps]
        dots = [torch.dot(l, torch.tensor(w, dtype=torch.float64)) for l, w in zip(lp_t, ws)]
        rdots = [torch.dot(torch.tensor(r, dtype=torch.float64),
                           torch.tensor(w, dtype=torch.float64)) for r, w in zip(refs, ws)]
        c = torch.stack([dots[i] - rdots[i] for i in range(0, 2 * npairs, 2)])
        r = torch.stack([dots[i] - rdots[i] for i in range(1, 2 * npairs, 2)])
        loss = -torch.nn.functional.logsigmoid(beta * (c - r)).mean()
        loss.backward()
        metrics = {"dpo_loss": loss.item(),
                   "accuracy": (c > r).double().mean().item(),
                   "margin": (beta * c - beta * r).mean().item(),
                   "chosen_reward": (beta * c).mean().item(),
                   "rejected_reward": (beta * r).mean().item()}
        cases.append({"name": name, "kind": "dpo", "beta": beta,
                      "logprobs": lps, "ref_logprobs": refs, "weights": ws,
                      "loss": loss.item(), "metrics": metrics,
                      "grad": [t.grad.tolist() for t in lp_t]})

    for name, coef, discount in (("distillation_undiscounted", 1.0, 0.0),
                                 ("distillation_discounted", 0.7, 0.9)):
        seqs = []
        for n, first in ((7, 3), (5, 1), (6, 6)):
            mask = [0.0] * first + [1.0] * (n - first)
            q = [v if m else 0.0 for v, m in zip(seq(n), mask)]
            seqs.append({"logprobs": q, "teacher": seq(n), "mask": mask,
                         "advantages": [f32(rng.normal()) if m else 0.0 for m in mask]})
        out, kl_sum, m_sum = [], 0.0, 0.0
        for s_ in seqs:
            m = torch.tensor(s_["mask"], dtype=torch.float64)
            rkl = (torch.tensor(s_["logprobs"], dtype=torch.float64)
                   - torch.tensor(s_["teacher"], dtype=torch.float64)) * m
            x = (-coef * m * rkl).tolist()
            if discount > 0:
                for t in range(len(x) - 2, -1, -1):
                    x[t] += discount * x[t + 1]
            out.append([a + b for a, b in zip(s_["advantages"], x)])
            kl_sum += rkl.sum().item()
            m_sum += m.sum().item()
        cases.append({"name": name, "kind": "distillation", "coef": coef,
                      "discount": discount, "seqs": seqs, "expected": out,
                      "teacher_kl": kl_sum / m_sum})

    for name, zero in (("mean_nll", False), ("mean_nll_zero_weight", True)):
        lens = (4, 6, 3)
        lps = [seq(n) for n in lens]
        ws = [[0.0 if zero else f32(rng.uniform()) for _ in range(n)] for n in lens]
        lp_t = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in lps]
        num = sum(torch.dot(l, torch.tensor(w, dtype=torch.float64)) for l, w in zip(lp_t, ws))
        den = sum(sum(w) for w in ws)
        case = {"name": name, "kind": "mean_nll", "logprobs": lps, "weights": ws}
        if zero:
            case.update(nll=None, grad=[[0.0] * n for n in lens])
        else:
            nll = -num / den
            nll.backward()
            case.update(nll=nll.item(), grad=[t.grad.tolist() for t in lp_t])
        cases.append(case)
    return cases


FILES = {
    "losses.json": losses_file,
    "boundaries.json": boundaries_file,
    "shapes.json": shapes_file,
    "numerics.json": numerics_file,
    "sequences.json": sequences_file,
    "head.json": head_file,
    "objectives/objectives.json": objectives_file,
}
FORMATS = {"objectives/objectives.json": "tinkerloss.objectives.v1"}


def render(cases, fmt=FORMAT):
    body = ",\n".join(json.dumps(c, separators=(",", ":"), allow_nan=False)
                      for c in cases)
    return '{"format":"%s","cases":[\n%s\n]}\n' % (fmt, body)


def main(argv):
    check = "--check" in argv
    stale = 0
    for name, build in FILES.items():
        text = render(build(), FORMATS.get(name, FORMAT))
        path = os.path.join(HERE, name)
        if check:
            with open(path, encoding="utf-8") as f:
                same = f.read() == text
            print(f"{name}: {'identical' if same else 'DIFFERS'}")
            stale += not same
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote {name} ({len(text)} bytes)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

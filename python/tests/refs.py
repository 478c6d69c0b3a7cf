"""PyTorch float64 references of the five losses (the formulas of the
Tinker docs, as tinkerloss.h states them) and test data."""

import numpy as np
import torch

CONFIGS = {
    "cross_entropy": None,
    "importance_sampling": None,
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
    "dro": {"beta": 0.05},
}


def loss_of(loss_fn, config, lp, inputs):
    """The summed loss of one datum's logprobs lp (a float64 tensor that may
    require grad) and its inputs (float64 tensors)."""
    if loss_fn == "cross_entropy":
        return -(inputs["weights"] * lp).sum()
    q, a = inputs["logprobs"], inputs["advantages"]
    r = torch.exp(lp - q)
    if loss_fn == "importance_sampling":
        return -(r * a).sum()
    if loss_fn == "ppo":
        lo, hi = config["clip_low_threshold"], config["clip_high_threshold"]
        return -torch.min(r * a, torch.clamp(r, lo, hi) * a).sum()
    if loss_fn == "cispo":
        lo, hi = config["clip_low_threshold"], config["clip_high_threshold"]
        return -(torch.clamp(r, lo, hi).detach() * lp * a).sum()
    beta = config["beta"]
    return -(lp * a - 0.5 * beta * (lp - q) ** 2).sum()


def make_batch(loss_fn, sizes, v, seed=0, k=1):
    """Datums as wire dicts with numpy inputs, and their logits [N_i, V]."""
    g = np.random.default_rng(seed)
    data, logits = [], []
    for n in sizes:
        x = (g.standard_normal((n, v)) * 2).astype(np.float32)
        shape = (n, k) if k > 1 else (n,)
        t = g.integers(0, v, shape)
        x64 = torch.tensor(x, dtype=torch.float64)
        lp = torch.log_softmax(x64, -1).gather(-1, torch.tensor(t).reshape(n, k)).reshape(shape)
        if loss_fn == "cross_entropy":
            inputs = {"target_tokens": t, "weights": g.uniform(0, 1, shape).astype(np.float32)}
        else:
            inputs = {"target_tokens": t,
                      "logprobs": (lp.numpy() + 0.3 * g.standard_normal(shape)).astype(np.float32),
                      "advantages": g.standard_normal(shape).astype(np.float32)}
        data.append({"model_input": {"chunks": [{"type": "encoded_text",
                                                 "tokens": [1] + list(np.ravel(t)[:n - 1])}]},
                     "loss_fn_inputs": inputs})
        logits.append(x)
    return data, logits


def reference_fb(loss_fn, config, data, logits):
    """logprobs, loss and dL/dlogits per datum in float64 autograd."""
    total, lps, grads = 0.0, [], []
    for d, x in zip(data, logits):
        xx = torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True)
        t = torch.tensor(d["loss_fn_inputs"]["target_tokens"])
        lp = torch.log_softmax(xx, -1).gather(-1, t.reshape(t.shape[0], -1)).reshape(t.shape)
        inputs = {k: torch.tensor(np.asarray(v), dtype=torch.float64)
                  for k, v in d["loss_fn_inputs"].items() if k != "target_tokens"}
        loss = loss_of(loss_fn, config, lp, inputs)
        loss.backward()
        total += loss.item()
        lps.append(lp.detach().numpy())
        grads.append(xx.grad.numpy())
    return lps, total, grads

"""The helpers around the losses against numpy float64 formulas (the
cookbook's, as tinkerloss.h states them)."""

import numpy as np
import pytest
import torch

import tinkerloss as tl


def datum(targets, weights):
    return {"model_input": {"chunks": []},
            "loss_fn_inputs": {"target_tokens": np.asarray(targets, np.int64),
                               "weights": np.asarray(weights, np.float32)}}


def test_mean_nll():
    data = [datum([1, 2, 3], [1, 0, 2]), datum([4, 5], [0.5, 0.5])]
    lps = [np.array([-1.0, -2.0, -0.5], np.float32), np.array([-3.0, -0.25], np.float32)]
    res = tl.mean_nll(data, lps)
    w = np.array([1, 0, 2, 0.5, 0.5])
    lp = np.array([-1.0, -2.0, -0.5, -3.0, -0.25])
    assert res.loss == pytest.approx(-(w * lp).sum() / w.sum(), rel=1e-12)
    np.testing.assert_allclose(np.concatenate(res.grad_logprobs), -w / w.sum(), rtol=1e-7)
    zero = tl.mean_nll([datum([1], [0])], [np.array([-1.0], np.float32)])
    assert np.isnan(zero.loss) and zero.grad_logprobs[0][0] == 0


def test_dpo_loss_metrics():
    data = [datum([1, 2], [1, 1]), datum([3, 4], [1, 0])] * 2
    lps = [np.array(v, np.float32) for v in ([-1, -2], [-0.5, -9], [-3, -1], [-0.1, -1])]
    refs = [np.array(v, np.float32) for v in ([-1.5, -2], [-0.5, -1], [-2, -1], [-0.5, -4])]
    res = tl.dpo_loss(data, lps, refs, beta=0.5)
    s = [float((lp.astype(float) - r) @ d["loss_fn_inputs"]["weights"])
         for lp, r, d in zip(lps, refs, data)]
    z = [0.5 * (s[0] - s[1]), 0.5 * (s[2] - s[3])]
    assert res.loss == pytest.approx(np.mean([np.log1p(np.exp(-x)) for x in z]), rel=1e-12)
    assert res.metrics["accuracy"] == 0.5  # pair 0: c > r; pair 1: c < r
    assert res.metrics["margin"] == pytest.approx(np.mean(z), rel=1e-12)
    assert res.metrics["chosen_reward"] == pytest.approx(0.5 * (s[0] + s[2]) / 2, rel=1e-12)


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_estimate(est):
    g = np.random.default_rng(0)
    lp = (-g.uniform(0, 3, 50)).astype(np.float32)
    ref = (-g.uniform(0, 3, 50)).astype(np.float32)
    d = lp.astype(float) - ref
    want = {"k1": (d, np.ones(50)), "k2": (d * d / 2, d),
            "k3": (np.exp(-d) + d - 1, 1 - np.exp(-d))}[est]
    kl = tl.kl_estimate(lp, ref, est)
    np.testing.assert_allclose(kl.values, want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kl.grad, want[1], rtol=1e-5, atol=1e-6)
    assert kl.total == pytest.approx(want[0].sum(), rel=1e-5)
    assert isinstance(tl.kl_estimate(torch.tensor(lp), torch.tensor(ref)).values, torch.Tensor)


def fold(x, discount):
    y = np.array(x, np.float64)
    for t in range(len(y) - 2, -1, -1):
        y[t] += discount * y[t + 1]
    return y


@pytest.mark.parametrize("discount", [0.0, 0.9])
def test_kl_penalty_and_distillation(discount):
    g = np.random.default_rng(1)
    q = [(-g.uniform(0, 2, n)).astype(np.float32) for n in (4, 6)]
    ref = [(-g.uniform(0, 2, n)).astype(np.float32) for n in (4, 6)]
    mask = [np.array([0, 1, 1, 1], np.float32), np.array([1, 1, 0, 0, 1, 1], np.float32)]
    adv = [g.standard_normal(n).astype(np.float32) for n in (4, 6)]
    d = [(a.astype(float) - b) * m for a, b, m in zip(q, ref, mask)]
    avg = sum(x.sum() for x in d) / sum(m.sum() for m in mask)
    a1 = [a.copy() for a in adv]
    got = tl.kl_penalty(q, ref, a1, mask, coef=0.1, discount=discount)
    assert got == pytest.approx(avg, rel=1e-6)
    for a, old, x, m in zip(a1, adv, d, mask):
        want = old + (fold(0.1 * m * (avg - x), discount) if discount else 0.1 * m * (avg - x))
        np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)
    a2 = [a.copy() for a in adv]
    kl = tl.distillation_advantages(q, ref, a2, mask, coef=0.5, discount=discount)
    assert kl == pytest.approx(avg, rel=1e-6)
    for a, old, x, m in zip(a2, adv, d, mask):
        pen = -0.5 * m * x
        np.testing.assert_allclose(a, old + (fold(pen, discount) if discount else pen),
                                   rtol=1e-5, atol=1e-6)


def test_group_advantages():
    got = tl.group_advantages([1.0, 2.0, 6.0])
    np.testing.assert_array_equal(got, np.array([-2, -1, 3], np.float32))


def test_datums_from_sample_and_trajectory():
    d = tl.datum_from_sample([5, 6, 7], [8, 9], [-0.5, -0.25], 2.0)
    inputs = d["loss_fn_inputs"]
    assert d["model_input"]["chunks"][0]["tokens"] == [5, 6, 7, 8]
    np.testing.assert_array_equal(inputs["target_tokens"], [6, 7, 8, 9])
    np.testing.assert_array_equal(inputs["advantages"], [0, 0, 2, 2])
    np.testing.assert_array_equal(inputs["logprobs"], [0, 0, -0.5, -0.25])
    np.testing.assert_array_equal(inputs["mask"], [0, 0, 1, 1])
    turns = [{"observation": [1, 2], "action": [3, 4], "action_logprobs": [-0.1, -0.2]},
             {"observation": [1, 2, 3, 4, 5], "action": [6], "action_logprobs": [-0.3],
              "masked": True},
             {"observation": [9], "action": [8], "action_logprobs": [-0.4]}]
    data = tl.datums_from_trajectory(turns, 1.5)
    assert len(data) == 2  # the last observation does not extend the sequence
    a = data[0]["loss_fn_inputs"]
    assert data[0]["model_input"]["chunks"][0]["tokens"] == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(a["target_tokens"], [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(a["mask"], [0, 1, 1, 0, 0])  # the masked turn's action: 0
    np.testing.assert_array_equal(a["advantages"], [0, 1.5, 1.5, 0, 0])
    np.testing.assert_array_equal(a["logprobs"], np.float32([0, -0.1, -0.2, 0, -0.3]))
    np.testing.assert_array_equal(data[1]["loss_fn_inputs"]["target_tokens"], [8])
    # the datums feed the losses as they are
    res = tl.loss(data, "ppo", None, [np.full(5, -0.2, np.float32), np.full(1, -0.4, np.float32)])
    assert res.metrics["tokens:sum"] == 6

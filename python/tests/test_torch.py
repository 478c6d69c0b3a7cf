"""tinkerloss.torch: logprobs under autograd (finite differences, float64
autograd) and the built-in losses inside forward_backward_custom."""

import numpy as np
import pytest
import torch

import tinkerloss as tl
import tinkerloss.torch as tlt
from refs import CONFIGS, loss_of
from sdk_standins import new, old

GENERATIONS = pytest.mark.parametrize("gen", [old, new], ids=["old", "new"])


def test_logprobs_finite_differences():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 9, generator=g, dtype=torch.float32)
    t = torch.randint(0, 9, (3, 4), generator=g)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    temperature = 0.7
    xx = x.clone().requires_grad_(True)
    (tlt.logprobs(xx, t, temperature).double() * w).sum().backward()
    eps = 1e-2
    fd = torch.zeros_like(x, dtype=torch.float64)
    for idx in np.ndindex(*x.shape):
        for sign in (1, -1):
            y = x.clone()
            y[idx] += sign * eps
            f = (tl.logprobs(y, t, temperature=temperature).double() * w).sum()
            fd[idx] += sign * f / (2 * eps)
    # central differences of float32 logprobs: O(eps^2) plus rounding / eps
    np.testing.assert_allclose(xx.grad.numpy(), fd.numpy(), atol=2e-4, rtol=1e-3)


def test_logprobs_against_float64_autograd():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 30, generator=g)
    t = torch.randint(0, 30, (5, 2), generator=g)
    up = torch.randn(5, 2, generator=g)
    xx = x.clone().requires_grad_(True)
    lp = tlt.logprobs(xx, t, 2.0)
    assert lp.requires_grad and lp.shape == (5, 2)
    (lp * up).sum().backward()
    x64 = x.double().requires_grad_(True)
    (torch.log_softmax(x64 / 2.0, -1).gather(-1, t) * up.double()).sum().backward()
    np.testing.assert_allclose(xx.grad.numpy(), x64.grad.numpy(), rtol=2e-5, atol=1e-30)
    xb = x.bfloat16().requires_grad_(True)
    tlt.logprobs(xb, t[:, 0].contiguous()).sum().backward()
    assert xb.grad.dtype == torch.bfloat16


def reference_custom(loss_fn, cfg, lps, extra):
    """The loss and dloss/dlogprobs of PyTorch's formulas on the logprobs."""
    leaves = [lp.detach().double().requires_grad_(True) for lp in lps]
    total = sum(loss_of(loss_fn, cfg, lp, {k: torch.tensor(v, dtype=torch.float64)
                                           for k, v in e.items()})
                for lp, e in zip(leaves, extra))
    total.backward()
    return total.item(), [lp.grad for lp in leaves]


def fake_server(gen, logprobs):
    """An `answer` returning fixed logprobs and cross_entropy's loss:sum."""
    def answer(data, loss_fn, loss_fn_config):
        outputs, loss = [], 0.0
        for datum, lp in zip(data, logprobs):
            w = datum.loss_fn_inputs["weights"].to_numpy()
            loss -= float((w * lp).sum())
            outputs.append({"logprobs": gen.TensorData.from_numpy(lp)})
        return gen.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord",
                                         loss_fn_outputs=outputs,
                                         metrics={"loss:sum": loss, "tokens:sum": 7.0})
    return answer


@GENERATIONS
@pytest.mark.parametrize("loss_fn", ["ppo", "importance_sampling", "cispo", "dro"])
def test_builtin_loss_in_forward_backward_custom(gen, loss_fn):
    rng = np.random.default_rng(2)
    lps = [(-rng.uniform(0.1, 3, n)).astype(np.float32) for n in (3, 4)]
    extra = [{"logprobs": (lp + 0.3 * rng.standard_normal(lp.size)).astype(np.float32),
              "advantages": rng.standard_normal(lp.size).astype(np.float32)} for lp in lps]
    data = [gen.Datum(model_input=gen.ModelInput.from_ints(list(range(lp.size))),
                      loss_fn_inputs={"target_tokens": np.arange(lp.size, dtype=np.int64)})
            for lp in lps]
    client = gen.TrainingClient(fake_server(gen, lps))
    cfg = CONFIGS[loss_fn]
    seen = {}
    fn = tlt.builtin_loss(loss_fn, cfg, inputs=extra)

    def loss_fn_spy(d, logprobs_list):
        loss, metrics = fn(d, logprobs_list)
        seen.update(loss=loss, metrics=metrics, lps=logprobs_list)
        return loss, metrics

    result = client.forward_backward_custom(data, loss_fn_spy).result()
    want_loss, want_grads = reference_custom(loss_fn, cfg, seen["lps"], extra)
    assert seen["loss"].dtype == torch.float32
    assert seen["loss"].item() == pytest.approx(want_loss, rel=1e-6, abs=1e-6)
    for lp, want in zip(seen["lps"], want_grads):
        np.testing.assert_allclose(lp.grad.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
    # the weights sent are -dloss/dlogprobs; the built-in loss's metrics win
    backward = client.requests[-1]
    for datum, lp in zip(backward[1], seen["lps"]):
        np.testing.assert_array_equal(datum.loss_fn_inputs["weights"].to_numpy(),
                                      -lp.grad.numpy())
    assert result.metrics["loss:sum"] == pytest.approx(want_loss, rel=1e-6)
    assert result.metrics["tokens:sum"] == 7.0
    direct = tl.loss([{"model_input": {"chunks": []},
                       "loss_fn_inputs": {"target_tokens": np.arange(lp.size), **e}}
                      for lp, e in zip(lps, extra)], loss_fn, cfg, lps)
    assert seen["metrics"] == direct.metrics


@GENERATIONS
def test_builtin_cross_entropy_reads_the_datums_weights(gen):
    lps = [np.array([-0.5, -1.5, -2.0], np.float32)]
    data = [gen.Datum(model_input=gen.ModelInput.from_ints([1, 2, 3]),
                      loss_fn_inputs={"target_tokens": np.array([2, 3, 4], np.int64),
                                      "weights": np.array([1, 0, 2], np.float32)})]
    client = gen.TrainingClient(fake_server(gen, lps))
    result = client.forward_backward_custom(data, tlt.builtin_loss("cross_entropy")).result()
    assert result.metrics["loss:sum"] == pytest.approx(0.5 + 4.0)
    np.testing.assert_array_equal(client.requests[-1][1][0].loss_fn_inputs["weights"].to_numpy(),
                                  [1, 0, 2])


def test_builtin_loss_errors():
    with pytest.raises(tl.Error, match="unknown") as info:
        tlt.builtin_loss("ppx")
    assert info.value.status == tl.Status.ERR_CONFIG
    fn = tlt.builtin_loss("ppo")
    datum = {"model_input": {"chunks": []}, "loss_fn_inputs": {"target_tokens": np.array([1])}}
    with pytest.raises(tl.Error) as info:  # no sampler logprobs, no advantages
        fn([datum], [torch.zeros(1, requires_grad=True)])
    assert info.value.status == tl.Status.ERR_MISSING
    fn = tlt.builtin_loss("ppo", inputs=[{"logprobs": np.zeros(1, np.float32),
                                          "target_tokens": np.array([1])}])
    with pytest.raises(tl.Error, match="already has target_tokens"):
        fn([datum], [torch.zeros(1, requires_grad=True)])


def test_dpo_loss_callable():
    rng = np.random.default_rng(3)
    lps = [torch.tensor(-rng.uniform(0.1, 2, 3).astype(np.float32), requires_grad=True)
           for _ in range(4)]
    refs = [(-rng.uniform(0.1, 2, 3)).astype(np.float32) for _ in range(4)]
    data = [{"model_input": {"chunks": []},
             "loss_fn_inputs": {"target_tokens": np.arange(3), "weights": np.ones(3, np.float32)}}
            for _ in range(4)]
    loss, metrics = tlt.dpo_loss(refs, beta=0.2)(data, lps)
    loss.backward()
    l64 = [lp.detach().double().requires_grad_(True) for lp in lps]
    s = [x.sum() - float(r.astype(np.float64).sum()) for x, r in zip(l64, refs)]
    want = -(torch.nn.functional.logsigmoid(0.2 * (s[0] - s[1])) +
             torch.nn.functional.logsigmoid(0.2 * (s[2] - s[3]))) / 2
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert metrics["dpo_loss"] == pytest.approx(want.item(), rel=1e-9)
    for lp, w in zip(lps, l64):
        np.testing.assert_allclose(lp.grad.numpy(), w.grad.numpy(), rtol=1e-6)

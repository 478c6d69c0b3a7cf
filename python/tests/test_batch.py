"""forward_backward, loss, combine_results and verify against PyTorch
float64 references and the command line."""

import json
import os
import subprocess

import numpy as np
import pytest
import torch

import tinkerloss as tl
from refs import CONFIGS, make_batch, reference_fb
from sdk_standins import new, old

LOSSES = pytest.mark.parametrize("loss_fn", list(CONFIGS))


@LOSSES
def test_forward_backward_against_float64(loss_fn):
    cfg = CONFIGS[loss_fn]
    data, logits = make_batch(loss_fn, [5, 1, 9], 40, seed=1)
    res = tl.forward_backward(data, loss_fn, cfg, logits=logits)
    lps, total, grads = reference_fb(loss_fn, cfg, data, logits)
    assert res.loss_fn_output_type == "ArrayRecord"
    for got, want in zip(res.loss_fn_outputs, lps):
        assert got["logprobs"].dtype == np.float32 and got["logprobs"].shape == want.shape
        np.testing.assert_allclose(got["logprobs"], want, rtol=1.2e-7, atol=2e-6)
    assert res.metrics["loss:sum"] == pytest.approx(total, rel=1e-5, abs=1e-5)
    assert res.metrics["tokens:sum"] == 15
    for got, want in zip(res.grad_logits, grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss_fn", ["cross_entropy", "importance_sampling"])
def test_k_targets(loss_fn):
    data, logits = make_batch(loss_fn, [4, 3], 30, seed=2, k=3)
    res = tl.forward_backward(data, loss_fn, None, logits=logits)
    lps, total, grads = reference_fb(loss_fn, None, data, logits)
    assert res.loss_fn_outputs[0]["logprobs"].shape == (4, 3)
    np.testing.assert_allclose(res.loss_fn_outputs[1]["logprobs"], lps[1], atol=2e-6)
    assert res.metrics["loss:sum"] == pytest.approx(total, rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(res.grad_logits[0], grads[0], rtol=1e-4, atol=1e-6)


def test_packed_logits_out_and_forward_only():
    data, logits = make_batch("ppo", [3, 4], 20, seed=3)
    packed = np.concatenate(logits)
    want = tl.forward_backward(data, "ppo", None, logits=logits)
    out = np.full((7, 24), 5.0, np.float32)[:, :20]
    got = tl.forward_backward(data, "ppo", None, logits=packed, out=out)
    assert got.metrics == want.metrics
    np.testing.assert_array_equal(out, np.concatenate(want.grad_logits))
    assert np.shares_memory(got.grad_logits[1], out)
    fwd = tl.forward_backward(data, "ppo", None, logits=packed, grads=False)
    assert fwd.grad_logits is None and fwd.metrics["loss:sum"] == want.metrics["loss:sum"]
    np.testing.assert_array_equal(fwd.loss_fn_outputs[1]["logprobs"],
                                  want.loss_fn_outputs[1]["logprobs"])
    inplace = [x.copy() for x in logits]
    tl.forward_backward(data, "ppo", None, logits=inplace, out=inplace)
    for a, b in zip(inplace, want.grad_logits):
        np.testing.assert_array_equal(a, b)


def test_torch_bfloat16_logits_and_entropy():
    data, logits = make_batch("importance_sampling", [6], 50, seed=4)
    x = torch.tensor(logits[0]).bfloat16()
    res = tl.forward_backward(data, "importance_sampling", None, logits=[x], entropy=True,
                              temperature=0.7)
    assert isinstance(res.loss_fn_outputs[0]["logprobs"], torch.Tensor)
    assert res.grad_logits[0].dtype == torch.bfloat16
    lp = tl.logprobs(x, torch.tensor(data[0]["loss_fn_inputs"]["target_tokens"]),
                     temperature=0.7, return_entropy=True)
    assert torch.equal(res.loss_fn_outputs[0]["logprobs"], lp[0])
    assert res.metrics["entropy:mean"] == pytest.approx(float(lp[1].double().mean()), rel=1e-5)


@pytest.mark.parametrize("gen", [old, new], ids=["old", "new"])
def test_sdk_datums_of_both_generations(gen):
    data, logits = make_batch("ppo", [4, 2], 16, seed=5)
    sdk = [gen.Datum(model_input=gen.ModelInput.from_ints(d["model_input"]["chunks"][0]["tokens"]),
                     loss_fn_inputs={k: gen.TensorData.from_numpy(v)
                                     for k, v in d["loss_fn_inputs"].items()})
           for d in data]
    a = tl.forward_backward(sdk, "ppo", CONFIGS["ppo"], logits=logits)
    b = tl.forward_backward(data, "ppo", CONFIGS["ppo"], logits=logits)
    assert a.metrics == b.metrics


def test_mask_selects_the_sampled_tokens():
    data, logits = make_batch("ppo", [6], 12, seed=6)
    q = data[0]["loss_fn_inputs"]["logprobs"]
    mask = np.array([0, 0, 1, 1, 0, 1], np.float32)
    data[0]["loss_fn_inputs"]["mask"] = mask
    res = tl.forward_backward(data, "ppo", None, logits=logits)
    lp = res.loss_fn_outputs[0]["logprobs"].astype(np.float64)
    sel = mask > 0
    assert res.metrics["kl_sample_train_v1:mean"] == pytest.approx(
        float(np.mean(q[sel] - lp[sel])), rel=1e-6)
    assert res.metrics["sampler_entropy:mean"] == pytest.approx(float(-q[sel].mean()), rel=1e-6)


@LOSSES
def test_loss_from_logprobs(loss_fn):
    cfg = CONFIGS[loss_fn]
    data, logits = make_batch(loss_fn, [3, 5], 10, seed=7)
    fb = tl.forward_backward(data, loss_fn, cfg, logits=logits)
    lps = [o["logprobs"] for o in fb.loss_fn_outputs]
    res = tl.loss(data, loss_fn, cfg, lps)
    assert res.loss == fb.metrics["loss:sum"] and res.metrics == fb.metrics
    for g, lp, d in zip(res.grad_logprobs, lps, data):
        lpt = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
        inputs = {k: torch.tensor(v, dtype=torch.float64)
                  for k, v in d["loss_fn_inputs"].items() if k != "target_tokens"}
        from refs import loss_of
        loss_of(loss_fn, cfg, lpt, inputs).backward()
        np.testing.assert_allclose(g, lpt.grad.numpy(), rtol=1e-6, atol=1e-7)
    tres = tl.loss(data, loss_fn, cfg, [torch.tensor(x) for x in lps])
    assert isinstance(tres.grad_logprobs[0], torch.Tensor)


def sdk_combine(results):
    """The SDK's combination (chunked_fwdbwd_helpers.py) for the float
    reductions, written here from its description: sum, weighted mean,
    min, max, slack, unique; unknown reductions and keys missing from a
    chunk dropped."""
    w = np.array([len(r.loss_fn_outputs) for r in results], np.float64)
    out = {}
    for key in results[0].metrics:
        red = key.split(":")[1]
        if any(key not in r.metrics for r in results) or red not in (
                "sum", "mean", "min", "max", "slack", "unique"):
            continue
        v = np.array([r.metrics[key] for r in results], np.float64)
        if red == "unique":
            out[key] = v[0]
            out.update({f"{key}_{i + 1}": x for i, x in enumerate(v[1:])})
        else:
            out[key] = {"sum": lambda: np.sum(v), "min": lambda: np.min(v),
                        "max": lambda: np.max(v),
                        "mean": lambda: np.average(v, weights=w),
                        "slack": lambda: np.max(v) - np.average(v, weights=w)}[red]().item()
    return out


def test_combine_results_as_the_sdk():
    data, logits = make_batch("ppo", [3, 4, 2, 5, 1], 12, seed=8)
    chunks = [tl.forward_backward(data[a:b], "ppo", None, logits=logits[a:b])
              for a, b in ((0, 2), (2, 3), (3, 5))]
    chunks[0].metrics["x:unique"], chunks[1].metrics["x:unique"] = 1.5, 2.5
    chunks[2].metrics["x:unique"] = 3.5
    chunks[1].metrics["only:sum"] = 1.0
    for c in chunks:
        c.metrics["odd:median"] = 1.0
    got = tl.combine_results(chunks)
    assert got.metrics == sdk_combine(chunks)  # bit for bit
    assert "only:sum" not in got.metrics and "odd:median" not in got.metrics
    assert got.metrics["x:unique_2"] == 3.5
    assert len(got.loss_fn_outputs) == 5 and len(got.grad_logits) == 5
    whole = tl.forward_backward(data, "ppo", None, logits=logits)
    assert got.metrics["loss:sum"] == pytest.approx(whole.metrics["loss:sum"], rel=1e-12)
    assert got.metrics["ratio:mean"] != pytest.approx(whole.metrics["ratio:mean"], rel=1e-9)
    empty = tl.combine_results([])
    assert (empty.loss_fn_outputs, empty.metrics, empty.loss_fn_output_type) == ([], {}, "")
    sdk = [new.ForwardBackwardOutput("ArrayRecord", [{}, {}], {"n:hash2": 3.0}),
           new.ForwardBackwardOutput("ArrayRecord", [{}], {"n:hash2": -1.0})]
    assert tl.combine_results(sdk).metrics == {"n:hash2": 2}  # (3 + (-1 & (2^64 - 1))) mod 2^64


def server_answer(loss_fn, cfg, data, logits, gen):
    res = tl.forward_backward(data, loss_fn, cfg, logits=logits, grads=False)
    return gen.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[{"logprobs": gen.TensorData.from_numpy(o["logprobs"])}
                         for o in res.loss_fn_outputs],
        metrics=res.metrics)


@pytest.mark.parametrize("gen", [old, new], ids=["old", "new"])
def test_verify_agreeing_and_disagreeing(gen):
    data, logits = make_batch("ppo", [4, 6], 25, seed=9)
    result = server_answer("ppo", None, data, logits, gen)
    report = tl.verify(data, "ppo", None, result, logits=logits)
    assert report.ok and report.problems == 0
    assert all(f.is_note for f in report.findings)
    assert str(report).endswith("0 problems")
    # a server logprob off by 0.05: a logprob finding, and the loss
    lp = np.array(result.loss_fn_outputs[1]["logprobs"].to_numpy(), np.float32)
    lp[2] -= 0.05
    result.loss_fn_outputs[1]["logprobs"] = gen.TensorData.from_numpy(lp)
    report = tl.verify(data, "ppo", None, result, logits=logits)
    assert not report.ok
    kinds = {f.kind for f in report.findings if not f.is_note}
    assert tl.FindingKind.FINDING_LOGPROB in kinds
    f = next(f for f in report.findings if f.kind == tl.FindingKind.FINDING_LOGPROB)
    assert (f.path, f.position, f.datum) == ("response.loss_fn_outputs[1].logprobs", 2, 1)
    assert f.server == pytest.approx(f.recomputed - 0.05, abs=1e-6)
    assert str(f).startswith("FINDING response.loss_fn_outputs[1].logprobs[2]: server ")
    loose = tl.verify(data, "ppo", None, result, logits=logits, atol=0.1, rtol=0)
    assert tl.FindingKind.FINDING_LOGPROB not in {x.kind for x in loose.findings}


def test_verify_words_findings_as_the_command_line(tmp_path, env_path):
    exe = env_path("TL_EXE")
    data, logits = make_batch("importance_sampling", [5, 3], 15, seed=10)
    for i, x in enumerate(logits):
        np.save(tmp_path / f"d{i}.npy", x)

    def metrics_off(result):
        result.metrics["loss:sum"] += 0.01
        result.metrics["extra:mean"] = 2.0
        lp = result.loss_fn_outputs[0]["logprobs"].to_numpy()
        lp[1] = 0.5  # positive
        lp[3] -= 0.001  # beyond the tolerance from the logits

    def negative_token(result):
        data[1]["loss_fn_inputs"]["target_tokens"][1] = -3

    for spoil in (metrics_off, negative_token):
        result = server_answer("importance_sampling", None, data, logits, new)
        spoil(result)
        tl.dump_call(tmp_path / "call.json", data, "importance_sampling", None, result)
        for extra, kw in (([], {}), (["--logits", "d0.npy", "d1.npy"], {"logits": logits}),
                          (["--atol", "1e-3", "--rtol", "1e-2"], {"atol": 1e-3, "rtol": 1e-2})):
            cli = subprocess.run([exe, "verify", "call.json", *extra], cwd=tmp_path,
                                 capture_output=True, text=True)
            assert cli.returncode == 1, cli.stderr
            report = tl.verify(data, "importance_sampling", None, result, **kw)
            assert str(report) + "\n" == cli.stdout
            assert report.problems >= 1
            assert ("(tolerance " in cli.stdout) == (spoil is metrics_off)


def test_dump_is_accepted_by_the_command_line(tmp_path, env_path):
    """dump_call of SDK objects of both generations, with a mask, an image
    chunk and a NaN metric, verified by `tinkerloss verify`."""
    exe = env_path("TL_EXE")
    for gen in (old, new):
        data, logits = make_batch("ppo", [4], 9, seed=11)
        data[0]["loss_fn_inputs"]["mask"] = np.array([0, 1, 1, 1], np.float32)
        t = data[0]["loss_fn_inputs"]["target_tokens"]
        datum = gen.Datum(
            model_input=gen.ModelInput(chunks=[
                gen.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=2),
                gen.EncodedTextChunk(tokens=[int(t[1]), int(t[2])])]),
            loss_fn_inputs={k: gen.TensorData.from_numpy(v)
                            for k, v in data[0]["loss_fn_inputs"].items()})
        result = server_answer("ppo", None, data, logits, gen)
        result.metrics["odd:mean"] = float("nan")
        path = tmp_path / f"{gen.Datum.__name__}.json"
        tl.dump_call(path, [datum], "ppo", None, result)
        text = path.read_text()
        assert '"odd:mean":"nan"' in text and '"mask"' in text and '"type":"image"' in text
        cli = subprocess.run([exe, "verify", str(path)], capture_output=True, text=True)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "0 problems" in cli.stdout and "odd:mean" in cli.stdout
        assert json.loads(text)["request"]["data"][0]["loss_fn_inputs"]["mask"]["data"] == \
            [0.0, 1.0, 1.0, 1.0]
    assert os.path.exists(exe)

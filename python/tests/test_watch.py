"""tinkerloss.watch against stand-in TrainingClients of both SDK
generations (sdk_standins.py), synchronous and asynchronous: a server that
answers right gives no finding, one corrupted number gives exactly one
finding of its kind, an exception reaches the caller as it was raised, and
the caller always gets the very object the client returned."""

import asyncio
import logging
import os
import struct
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import tinkerloss as tl
from sdk_standins import new, old
from tinkerloss import FindingKind
from tinkerloss._sdk import datum_arrays, datum_to_wire

GENERATIONS = pytest.mark.parametrize("gen", [old, new], ids=["old", "new"])
# how the caller gets a result: result(), await on the future of the
# _async method, or its result_async()
HOW = pytest.mark.parametrize("how", ["sync", "await", "result_async"])

V = 64
MODEL = np.random.default_rng(7).standard_normal((V, V), dtype=np.float32) * 2
PPO = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}


def model_logprobs(datum) -> np.ndarray:
    """The fixed model's logprobs of a datum's targets (logits: a row of
    MODEL per input token)."""
    arrays = datum_arrays(datum)
    logits = MODEL[arrays.input_tokens]
    return tl.logprobs(logits, arrays.loss_fn_inputs["target_tokens"])


def batch(gen, loss_fn="ppo", sizes=(9, 5, 12), seed=0, mask=False):
    """Datums of `gen` with numpy inputs; for the RL losses the sampler's
    logprobs are the model's plus noise, 0 on a two-token prompt."""
    rng = np.random.default_rng(seed)
    data = []
    for n in sizes:
        tokens = rng.integers(0, V, n + 1)
        inputs = {"target_tokens": tokens[1:].astype(np.int64)}
        if loss_fn == "cross_entropy":
            inputs["weights"] = rng.uniform(0, 1, n).astype(np.float32)
        else:
            probe = {"model_input": {"chunks": [{"type": "encoded_text",
                                                 "tokens": tokens[:-1].tolist()}]},
                     "loss_fn_inputs": {"target_tokens": inputs["target_tokens"]}}
            q = (model_logprobs(probe) + 0.05 * rng.standard_normal(n)).astype(np.float32)
            q = np.minimum(q, -1e-3)
            q[:2] = 0
            inputs["logprobs"] = q
            inputs["advantages"] = rng.standard_normal(n).astype(np.float32)
            if mask:
                inputs["mask"] = (np.arange(n) >= 2).astype(np.float32)
        data.append(gen.Datum(model_input=gen.ModelInput.from_ints(tokens[:-1].tolist()),
                              loss_fn_inputs=inputs))
    return data


class Server:
    """A stand-in Tinker server: the fixed model's logprobs and the loss
    computed from them. Like Tinker it reports loss:sum (with full=True
    every metric the library computes). corrupt(call, lps, metrics, data,
    loss_fn, config) may alter the answer of the call-th request (0-based).
    Every object returned is kept in `answers`."""

    def __init__(self, gen, corrupt=None, full=False):
        self.gen, self.corrupt, self.full = gen, corrupt, full
        self.answers = []

    def __call__(self, data, loss_fn, config):
        logits = [MODEL[datum_arrays(d).input_tokens] for d in data]
        res = tl.forward_backward(data, loss_fn, config, logits=logits, grads=False)
        lps = [o["logprobs"].copy() for o in res.loss_fn_outputs]
        metrics = dict(res.metrics) if self.full else {"loss:sum": res.metrics["loss:sum"]}
        if self.corrupt is not None:
            self.corrupt(len(self.answers), lps, metrics, data, loss_fn, config)
        out = self.gen.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord",
            loss_fn_outputs=[{"logprobs": self.gen.TensorData.from_numpy(lp)} for lp in lps],
            metrics=metrics)
        self.answers.append(out)
        return out


def call(client, how, method, *args):
    """What the caller gets from client.method(*args), retrieved `how`."""
    if how == "sync":
        return getattr(client, method)(*args).result()

    async def run():
        future = await getattr(client, method + "_async")(*args)
        return await (future if how == "await" else future.result_async())
    return asyncio.run(run())


def watched(client, **kwargs):
    """A watcher whose findings are collected in `seen`."""
    seen = []
    w = tl.watch(client, on_finding=lambda findings, info: seen.append((findings, info)),
                 **kwargs)
    return w, seen


def problems(seen):
    return [f for findings, _ in seen for f in findings]


# ---- a server that answers right -------------------------------------------------


@GENERATIONS
@HOW
@pytest.mark.parametrize("loss_fn, config", [("cross_entropy", None), ("ppo", PPO),
                                             ("importance_sampling", None)])
@pytest.mark.parametrize("full", [False, True], ids=["loss_sum", "all_metrics"])
def test_right_answers_give_no_finding(gen, how, loss_fn, config, full):
    server = Server(gen, full=full)
    w, seen = watched(gen.TrainingClient(server))
    data = batch(gen, loss_fn)
    for method in ("forward_backward", "forward"):
        result = call(w, how, method, data, loss_fn, config)
        assert result is server.answers[-1]
    assert seen == []
    report = w.report()
    assert (report.seen, report.verified, report.problems) == (2, 2, 0)
    assert [c.method for c in report.calls] == (
        ["forward_backward", "forward"] if how == "sync"
        else ["forward_backward_async", "forward_async"])
    assert all(c.state == "verified" and c.findings == [] for c in report.calls)
    assert report.largest["loss:sum"].difference <= report.largest["loss:sum"].tolerance


@GENERATIONS
@HOW
def test_the_caller_gets_the_very_object_the_client_returned(gen, how):
    """The same answer object, with and without the watcher; the datums the
    client received are the caller's own, unchanged."""
    answer = Server(gen)(batch(gen), "ppo", PPO)
    client = gen.TrainingClient(lambda data, loss_fn, config: answer)
    data = batch(gen)
    before = [datum_to_wire(d) for d in data]
    plain = call(client, how, "forward_backward", data, "ppo", PPO)
    w, seen = watched(client)
    assert call(w, how, "forward_backward", data, "ppo", PPO) is plain is answer
    assert seen == [] and w.report().verified == 1
    sent = client.requests[-1]
    assert all(a is b for a, b in zip(sent[1], data)) and sent[3] is PPO
    assert [datum_to_wire(d) for d in data] == before


# ---- one corrupted number: exactly one finding of its kind ------------------------


def corrupt_loss(call, lps, metrics, data, loss_fn, config):
    metrics["loss:sum"] += 0.5


def corrupt_logprob(call, lps, metrics, data, loss_fn, config):
    """One wrong logprob, the loss being the server's from the right ones:
    without the model's logits a wrong logprob shows as a loss:sum that the
    returned logprobs do not give."""
    lps[1][3] -= 1.0


def positive_logprob(call, lps, metrics, data, loss_fn, config):
    """A logprob above 0 from which the server computed its loss."""
    lps[1][3] = 0.25
    metrics["loss:sum"] = tl.loss(data, loss_fn, config, lps).loss


def missing_logprob(call, lps, metrics, data, loss_fn, config):
    lps[1][3] = np.nan


CORRUPTIONS = pytest.mark.parametrize("corrupt, kind, path", [
    (corrupt_loss, FindingKind.FINDING_METRIC, "response.metrics.loss:sum"),
    (corrupt_logprob, FindingKind.FINDING_METRIC, "response.metrics.loss:sum"),
    (positive_logprob, FindingKind.FINDING_POSITIVE, "response.loss_fn_outputs[1].logprobs"),
    (missing_logprob, FindingKind.FINDING_RESPONSE_VALUE,
     "response.loss_fn_outputs[1].logprobs"),
], ids=["loss_sum", "logprob", "positive_logprob", "nan_logprob"])


@GENERATIONS
@HOW
@CORRUPTIONS
@pytest.mark.parametrize("loss_fn, config", [("cross_entropy", None), ("ppo", PPO)])
def test_one_corruption_gives_exactly_one_finding(gen, how, corrupt, kind, path, loss_fn, config):
    server = Server(gen, corrupt)
    w, seen = watched(gen.TrainingClient(server))
    data = batch(gen, loss_fn)
    right = Server(gen)(data, loss_fn, config)
    result = call(w, how, "forward_backward", data, loss_fn, config)
    assert result is server.answers[-1]
    [(findings, info)] = seen
    [finding] = findings
    assert (finding.kind, finding.path) == (kind, path)
    assert info.index == 0 and info.loss_fn == loss_fn and info.state == "verified"
    if kind == FindingKind.FINDING_METRIC:
        assert finding.name == "loss:sum"
        if corrupt is corrupt_loss:
            assert finding.recomputed == pytest.approx(right.metrics["loss:sum"], rel=1e-6)
        else:
            assert finding.server == right.metrics["loss:sum"]
    else:
        assert finding.position == 3
    report = w.report()
    assert report.findings_by_kind == {kind.name: 1}
    assert report.calls[0].findings == [finding]


@GENERATIONS
@CORRUPTIONS
def test_log_writes_one_line_per_finding(gen, corrupt, kind, path, caplog):
    w = tl.watch(gen.TrainingClient(Server(gen, corrupt)))
    with caplog.at_level(logging.WARNING, logger="tinkerloss.watch"):
        w.forward_backward(batch(gen), "ppo", PPO).result()
        w.forward_backward(batch(gen), "ppo", PPO).result()
    assert len(caplog.records) == 2
    for record, info in zip(caplog.records, w.report().calls):
        [finding] = info.findings
        assert record.name == "tinkerloss.watch" and record.levelno == logging.WARNING
        assert record.getMessage() == f"call {info.index} forward_backward(ppo): {finding}"
        assert finding.kind == kind and finding.path == path


@GENERATIONS
@HOW
def test_raise_carries_the_findings_and_the_result(gen, how):
    server = Server(gen, corrupt_loss)
    w = tl.watch(gen.TrainingClient(server), on_finding="raise")
    with pytest.raises(tl.FindingsError) as info:
        call(w, how, "forward_backward", batch(gen), "ppo", PPO)
    err = info.value
    assert isinstance(err, tl.Error) and err.status == tl.Status.ERR_VALUE
    assert [f.kind for f in err.findings] == [FindingKind.FINDING_METRIC]
    assert err.result is server.answers[-1] and err.call.index == 0
    assert "1 finding" in str(err) and "loss:sum" in str(err)


def test_tolerances_are_the_callers():
    """A loss:sum off by 1e-3 passes loose tolerances, not the default."""
    def nudge(call, lps, metrics, *rest):
        metrics["loss:sum"] += 1e-3
    strict, seen = watched(new.TrainingClient(Server(new, nudge)))
    loose, unseen = watched(new.TrainingClient(Server(new, nudge)), atol=1e-3, rtol=1e-3)
    for w in (strict, loose):
        w.forward_backward(batch(new), "ppo", PPO).result()
    assert len(problems(seen)) == 1 and unseen == []


# ---- exceptions -------------------------------------------------------------------


@GENERATIONS
@HOW
def test_the_clients_exception_reaches_the_caller_unchanged(gen, how):
    error = RuntimeError("the server is down")

    def fail(data, loss_fn, config):
        raise error
    w = tl.watch(gen.TrainingClient(fail), on_finding="raise")
    with pytest.raises(RuntimeError) as info:
        call(w, how, "forward_backward", batch(gen), "ppo", PPO)
    assert info.value is error
    report = w.report()
    assert report.failed == 1 and report.verified == 0
    assert report.calls[0].error == "RuntimeError: the server is down"


@GENERATIONS
def test_an_exception_of_the_call_itself_passes_through(gen):
    """The stand-in, like the SDK, refuses an empty batch when called."""
    w, _ = watched(gen.TrainingClient(Server(gen)))
    with pytest.raises(ValueError, match="No data provided"):
        w.forward_backward([], "ppo", PPO)
    assert w.report().failed == 1


def test_what_the_watcher_cannot_check_is_logged_not_raised(caplog):
    """A result that is not a ForwardBackwardOutput: the caller gets it,
    the log says why it was not verified (the first time as a warning, then
    at debug level), on_finding is not involved."""
    odd = SimpleNamespace(metrics={})
    w = tl.watch(new.TrainingClient(lambda *request: odd), on_finding="raise")
    with caplog.at_level(logging.DEBUG, logger="tinkerloss.watch"):
        assert w.forward_backward(batch(new), "ppo", PPO).result() is odd
        assert w.forward_backward(batch(new), "ppo", PPO).result() is odd
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG]
    assert caplog.records[0].getMessage().startswith(
        "call 0 forward_backward(ppo) was not verified: Error: ")
    report = w.report()
    assert report.unverified == 2 and report.verified == 0
    assert "loss_fn_outputs" in report.calls[0].error


def test_a_loss_the_library_does_not_know_is_not_verified(caplog):
    data = batch(new)
    answer = Server(new)(data, "ppo", PPO)
    w = tl.watch(new.TrainingClient(lambda *request: answer), on_finding="raise")
    with caplog.at_level(logging.WARNING, logger="tinkerloss.watch"):
        assert w.forward_backward(data, "new_loss", None).result() is answer
    [record] = caplog.records
    assert "unknown loss_fn 'new_loss'" in record.getMessage()
    assert w.report().calls[0].state == "unverified"


# ---- futures and attributes ------------------------------------------------------------


class CountingFuture:
    """A future that counts how often its result is asked for."""

    def __init__(self, value):
        self.value, self.asked = value, 0

    def result(self, timeout=None):
        self.asked += 1
        return self.value


class LazyClient:
    def __init__(self, server):
        self.server, self.futures, self.model_id = server, [], "m"
        self._check = "the client's own"

    def forward_backward(self, data, loss_fn, loss_fn_config=None):
        self.futures.append(CountingFuture(self.server(data, loss_fn, loss_fn_config)))
        return self.futures[-1]

    def optim_step(self, params):
        return ("optim_step", params)


def test_futures_the_caller_has_not_asked_for_are_left_alone():
    client = LazyClient(Server(new))
    w, _ = watched(client)
    first = w.forward_backward(batch(new), "ppo", PPO)
    w.forward_backward(batch(new, seed=1), "ppo", PPO)
    assert [f.asked for f in client.futures] == [0, 0]
    first.result()
    first.result()  # verified once
    report = w.report()
    assert [f.asked for f in client.futures] == [2, 0]
    assert (report.seen, report.verified, report.pending) == (2, 1, 1)
    assert first.asked == 2  # the future's own attributes come through


def test_every_other_attribute_is_the_clients():
    client = LazyClient(Server(new))
    w = tl.watch(client)
    assert w.watched_client is client and w.futures is client.futures
    assert w._check == "the client's own"
    assert w.optim_step("adam") == ("optim_step", "adam")
    w.model_id = "other"
    assert client.model_id == "other"
    with pytest.raises(AttributeError):
        w.forward_backward_custom  # LazyClient has none: neither has the watcher
    assert "futures" in dir(w) and "report" in dir(w)


def test_a_shallow_copy_forwards_to_the_same_client():
    # copy.copy makes an instance without __init__ and asks it for
    # attributes before its state is in: no endless lookup
    import copy
    client = LazyClient(Server(new))
    w = copy.copy(tl.watch(client))
    assert w.watched_client is client and w.futures is client.futures


def test_iterator_data_is_read_once_by_both():
    server = Server(new)
    w, seen = watched(new.TrainingClient(server))
    data = batch(new)
    assert w.forward_backward(iter(data), "ppo", PPO).result() is server.answers[-1]
    assert seen == [] and w.report().verified == 1


def test_on_finding_must_be_known():
    with pytest.raises(tl.Error, match="on_finding"):
        tl.watch(new.TrainingClient(Server(new)), on_finding="print")


# ---- forward_backward_custom ---------------------------------------------------------------


def custom_batch(gen):
    """Datums as forward_backward_custom takes them (target_tokens only)."""
    return [gen.Datum(model_input=d.model_input,
                      loss_fn_inputs={"target_tokens": d.loss_fn_inputs["target_tokens"]})
            for d in batch(gen, "cross_entropy")]


def mean_logprob(data, logprobs_list):
    loss = -sum(lp.sum() for lp in logprobs_list) / sum(lp.numel() for lp in logprobs_list)
    return loss, {"mean_logprob": -loss.item()}


def with_own_loss_sum(data, logprobs_list):
    loss, metrics = mean_logprob(data, logprobs_list)
    return loss, {**metrics, "loss:sum": loss.item()}


def custom(client, how, data, loss_fn):
    if how == "sync":
        return client.forward_backward_custom(data, loss_fn).result()

    async def run():
        return await (await client.forward_backward_custom_async(data, loss_fn))
    return asyncio.run(run())


@GENERATIONS
@pytest.mark.parametrize("how", ["sync", "await"])
@pytest.mark.parametrize("loss_fn", [mean_logprob, with_own_loss_sum])
def test_custom_loss_right_answers(gen, how, loss_fn):
    """The backward pass, a cross_entropy call with weights -dC/dlogprobs,
    is verified (its loss:sum too, unless the custom loss set its own); the
    custom metrics are not the server's and are not checked."""
    server = Server(gen)
    w, seen = watched(gen.TrainingClient(server))
    result = custom(w, how, custom_batch(gen), loss_fn)
    assert result is server.answers[-1] and "mean_logprob" in result.metrics
    assert seen == []
    [info] = w.report().calls
    assert info.state == "verified" and info.loss_fn == "custom"
    assert info.custom_logprob_gap == 0.0


@GENERATIONS
def test_custom_loss_corrupted_backward_loss(gen):
    def backward_only(call, *rest):
        if call == 1:
            corrupt_loss(call, *rest)
    w, seen = watched(gen.TrainingClient(Server(gen, backward_only)))
    custom(w, "sync", custom_batch(gen), mean_logprob)
    [finding] = problems(seen)
    assert (finding.kind, finding.name) == (FindingKind.FINDING_METRIC, "loss:sum")


@GENERATIONS
def test_custom_loss_backward_logprobs_checked_and_compared(gen):
    """A backward pass whose logprob at data[1][3] is 0.5 (positive, and
    unlike the forward pass's), the loss computed from it: the positive
    value is the one finding, the difference from the forward pass is in
    the report."""
    forward = []

    def positive_in_backward(call, lps, metrics, data, loss_fn, config):
        if call == 0:
            forward.extend(lp.copy() for lp in lps)
        else:
            positive_logprob(call, lps, metrics, data, loss_fn, config)
    w, seen = watched(gen.TrainingClient(Server(gen, positive_in_backward)))
    custom(w, "sync", custom_batch(gen), mean_logprob)
    [finding] = problems(seen)
    assert finding.kind == FindingKind.FINDING_POSITIVE and finding.position == 3
    gap = 0.25 - float(forward[1][3])
    assert w.report().calls[0].custom_logprob_gap == pytest.approx(gap, rel=1e-6)


# ---- the report: drift and largest differences ------------------------------------------------


@pytest.mark.parametrize("mask", [False, True], ids=["q_nonzero", "mask"])
def test_drift_is_the_librarys_kl_sample_train(mask):
    """kl_sample_train_v1/_v2 per call as the library computes them (with a
    mask over mask > 0, otherwise over q != 0), the positions with the
    largest |q - lp|, and q - lp for the histogram."""
    server = Server(new)
    w, _ = watched(new.TrainingClient(server))
    data = batch(new, mask=mask)
    w.forward_backward(data, "ppo", PPO).result()
    lps = [out["logprobs"].to_numpy() for out in server.answers[-1].loss_fn_outputs]
    want = tl.loss(data, "ppo", PPO, lps).metrics
    report = w.report()
    [info] = report.calls
    assert info.masked == mask
    assert info.kl_sample_train_v1 == pytest.approx(want["kl_sample_train_v1:mean"], rel=1e-12)
    assert info.kl_sample_train_v2 == pytest.approx(want["kl_sample_train_v2:mean"], rel=1e-12)
    assert info.sampled == report.q_minus_lp_count == sum(len(lp) - 2 for lp in lps)
    q = [d.loss_fn_inputs["logprobs"].to_numpy() for d in data]
    diffs = np.concatenate([(qi.astype(np.float64) - li)[2:] for qi, li in zip(q, lps)])
    np.testing.assert_array_equal(np.sort(report.q_minus_lp), np.sort(diffs))
    top = report.top_positions[0]
    assert abs(top.difference) == np.abs(diffs).max()
    assert top.q == q[top.datum][top.position] and top.lp == lps[top.datum][top.position]
    assert report.drift == [(0, info.kl_sample_train_v1, info.kl_sample_train_v2)]


def test_largest_positions_over_calls():
    """A sampler logprob 3 below the trainer's at data[2][4] in the third
    call is the largest |q - lp| of all calls."""
    w, _ = watched(new.TrainingClient(Server(new)))
    for seed in range(4):
        data = batch(new, seed=seed)
        if seed == 2:
            q = data[2].loss_fn_inputs["logprobs"].to_numpy().copy()
            q[4] = model_logprobs(data[2])[4] - 3
            data[2] = new.Datum(model_input=data[2].model_input,
                                loss_fn_inputs={**data[2].loss_fn_inputs, "logprobs": q})
        w.forward_backward(data, "ppo", PPO).result()
    report = w.report()
    top = report.top_positions[0]
    assert (top.call, top.datum, top.position) == (2, 2, 4)
    assert top.difference == pytest.approx(-3, abs=1e-5)
    assert len(report.top_positions) == 10 and len(report.drift) == 4
    assert "  2 data[2][4]" in str(report)


def test_no_drift_without_sampler_logprobs():
    w, _ = watched(new.TrainingClient(Server(new)))
    w.forward_backward(batch(new, "cross_entropy"), "cross_entropy", None).result()
    report = w.report()
    assert report.drift == [] and report.q_minus_lp.size == 0
    assert report.calls[0].kl_sample_train_v1 is None


def test_the_sample_of_q_minus_lp_is_bounded():
    w = tl.Watcher(new.TrainingClient(Server(new)), sample_size=50)
    for seed in range(5):
        w.forward_backward(batch(new, seed=seed), "ppo", PPO).result()
    report = w.report()
    assert report.q_minus_lp.size == 50 and report.q_minus_lp_count == 5 * 20


def test_report_counts_and_words():
    def every_other(call, *rest):
        if call % 2:
            corrupt_loss(call, *rest)
    w, seen = watched(new.TrainingClient(Server(new, every_other)))
    for seed in range(4):
        w.forward_backward(batch(new, seed=seed), "ppo", PPO).result()
    pending = w.forward_backward(batch(new), "ppo", PPO)
    report = w.report()
    assert (report.seen, report.verified, report.pending) == (5, 4, 1)
    assert report.findings_by_kind == {"FINDING_METRIC": 2} and len(seen) == 2
    assert report.largest["loss:sum"].difference == pytest.approx(0.5, rel=1e-6)
    assert report.largest["loss:sum"].call in (1, 3)
    text = str(report)
    assert "calls: 5 seen, 4 verified, 0 failed, 0 not verifiable, 1 not retrieved" in text
    assert "findings: 2 (FINDING_METRIC 2)" in text
    assert "over the tokens with q != 0" in text and "ms per call" in text
    pending.result()
    assert w.report().verified == 5


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_plot_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    w, _ = watched(new.TrainingClient(Server(new)))
    for seed in range(3):
        w.forward_backward(batch(new, seed=seed), "ppo", PPO).result()
    path = tmp_path / "drift.png"
    w.report().plot(path)
    assert png_size(path) == (1000, 400)
    assert path.stat().st_size > 10_000  # two panels drawn, not a blank image


def test_plot_without_drift(tmp_path):
    pytest.importorskip("matplotlib")
    w, _ = watched(new.TrainingClient(Server(new)))
    w.report().plot(tmp_path / "empty.png")
    assert png_size(tmp_path / "empty.png") == (1000, 400)


# ---- the cost measurement runs ---------------------------------------------------------------


def test_watch_cost_script_runs(env_path):
    root = env_path("TL_SOURCE_ROOT")
    out = subprocess.run(
        [sys.executable, os.path.join(root, "bench", "watch_cost.py"), "--datums", "2",
         "--tokens", "16", "--runs", "2", "--calls", "2"],
        capture_output=True, text=True, check=True, env=os.environ).stdout
    assert "verification per call" in out and "0 findings" in out

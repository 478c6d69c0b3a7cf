"""watch: a Tinker TrainingClient whose forward and forward_backward
results are verified by the library as the caller retrieves them.

    training_client = tinkerloss.watch(training_client)
    result = training_client.forward_backward(data, "ppo", config).result()
    print(training_client.report())

The wrapper mirrors the SDK's TrainingClient (repository
thinking-machines-lab/tinker, src/tinker/lib/public_interfaces/
training_client.py): `forward` and `forward_backward` take
`(data, loss_fn, loss_fn_config=None)` and return an APIFuture
(api_future.py: `result(timeout)`, `result_async(timeout)`, awaitable);
their `_async` versions are coroutines that return such a future;
`forward_backward_custom(data, loss_fn)` runs the forward pass and the
user's loss, then returns the future of the backward call. Every other
attribute is the client's own, looked up on each access.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ._lib import Error, Status, fail
from ._sdk import _get, datum_inputs, output_arrays
from ._verify import FindingKind, _tolerance, verify

__all__ = ["watch", "Watcher", "WatchReport", "CallInfo", "Position", "Difference",
           "FindingsError"]

logger = logging.getLogger("tinkerloss.watch")

# The TrainingClient methods whose results are verified.
_WRAPPED = frozenset({"forward", "forward_async", "forward_backward", "forward_backward_async",
                      "forward_backward_custom", "forward_backward_custom_async"})
# How a future's result() ends without the call having failed.
_NOT_YET = (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)
# Positions kept per call, and over all calls, with the largest |q - lp|.
_TOP = 5
_TOP_ALL = 10


@dataclass(frozen=True)
class Position:
    """A sampled token: the sampler's logprob q (the datum's
    loss_fn_inputs.logprobs) and the trainer's lp (the server's returned
    logprob) at data[datum], target position `position` of call `call`."""

    call: int
    datum: int
    position: int
    q: float
    lp: float

    @property
    def difference(self) -> float:
        return self.q - self.lp


@dataclass(frozen=True)
class Difference:
    """The largest |server - recomputed| seen for one metric, with the
    tolerance it was held to and the call it came from."""

    name: str
    difference: float
    tolerance: float
    call: int
    server: float
    recomputed: float


@dataclass
class CallInfo:
    """One watched call. state: "pending" (its result not retrieved yet),
    "verified", "failed" (the call raised: `error`), "unverified" (the
    watcher could not check it: `error`). findings: the problems found
    (notes left out). kl_sample_train_v1/_v2: the sampler/trainer drift over
    the call's sampled tokens (`sampled` of them), None without sampler
    logprobs; top: its positions with the largest |q - lp|.
    custom_logprob_gap: forward_backward_custom only, the largest
    |forward-pass logprob - backward-pass logprob|. seconds: the time
    verification took."""

    index: int
    method: str
    loss_fn: str
    datums: int
    state: str = "pending"
    findings: list = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    kl_sample_train_v1: float | None = None
    kl_sample_train_v2: float | None = None
    sampled: int = 0
    masked: bool = False
    top: list = field(default_factory=list)
    custom_logprob_gap: float | None = None

    def describe(self) -> str:
        return f"call {self.index} {self.method}({self.loss_fn})"


class FindingsError(Error):
    """on_finding="raise": a verified call had findings. `findings` (the
    problems), `call` (its CallInfo) and `result` (what the client
    returned, so that the caller still has it)."""

    def __init__(self, findings, call, result):
        self.findings = list(findings)
        self.call = call
        self.result = result
        first = self.findings[0] if self.findings else None
        super().__init__(Status.ERR_VALUE, "", -1,
                         f"{call.describe()}: {len(self.findings)} finding"
                         f"{'' if len(self.findings) == 1 else 's'}"
                         + (f", the first: {first}" if first else ""))

    def __reduce__(self):
        return (FindingsError, (self.findings, self.call, None))


# ---- the request as it was sent ------------------------------------------------


def _argument(args, kwargs, position: int, name: str):
    if len(args) > position:
        return args[position]
    return kwargs.get(name)


def _with_argument(args, kwargs, position: int, name: str, value):
    if len(args) > position:
        args = args[:position] + (value,) + args[position + 1:]
    else:
        kwargs = {**kwargs, name: value}
    return args, kwargs


class _CustomLoss:
    """The caller's custom loss, called exactly as the SDK calls it; it keeps
    the logprob tensors the SDK hands it (their .grad is filled by the SDK's
    loss.backward(), and -grad is what it sends as the backward pass's
    weights: training_client.py, forward_backward_custom_async) and the
    names of the metrics the loss returns (merged over the server's there,
    in add_custom_metrics)."""

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn
        self.logprobs = None
        self.metric_names = frozenset()
        functools.update_wrapper(self, loss_fn, updated=())

    def __call__(self, data, logprobs_list, *args, **kwargs):
        out = self.loss_fn(data, logprobs_list, *args, **kwargs)
        try:
            self.logprobs = list(logprobs_list)
            if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping):
                self.metric_names = frozenset(out[1])
        except Exception:  # what the loss returned is the SDK's business
            pass
        return out


@dataclass
class _Request:
    data: list
    loss_fn: object
    loss_fn_config: object
    custom: _CustomLoss | None = None


# ---- drift between the sampler and the trainer --------------------------------


def _sampled(inputs: dict, lp: np.ndarray):
    """The sampled tokens of one datum as the library chooses them
    (tinkerloss.h, tl_forward_backward's metrics): with a `mask`, those
    with mask > 0, as the cookbook's compute_kl_sample_train
    (tinker_cookbook/rl/metrics.py) takes its action tokens; without one,
    those with q != 0 (prompt padding has q = 0); positions where q or lp
    is not finite are left out. Returns q and lp there (float64), their
    target positions and whether a mask chose them; None when the datum has
    no sampler logprobs or they do not match the returned ones."""
    q = inputs.get("logprobs")
    if q is None or q.shape != lp.shape:
        return None
    mask = inputs.get("mask")
    if mask is not None:
        if mask.shape[0] != q.shape[0]:
            return None
        chosen = mask.reshape(mask.shape + (1,) * (q.ndim - mask.ndim)) > 0
        chosen = np.broadcast_to(chosen, q.shape)
    else:
        chosen = q != 0
    q64, lp64 = q.astype(np.float64), lp.astype(np.float64)
    chosen = chosen & np.isfinite(q64) & np.isfinite(lp64)
    rows = np.nonzero(chosen)[0]
    return q64[chosen], lp64[chosen], rows, mask is not None


def _drift(index: int, data: list, result):
    """kl_sample_train_v1 = mean(q - lp) and kl_sample_train_v2 =
    0.5 * mean((q - lp)^2) over the call's sampled tokens (the cookbook's
    optim/kl_sample_train_v1 and _v2, rl/metrics.py
    compute_kl_sample_train), the differences themselves, the positions
    with the largest |q - lp| and whether a mask chose them."""
    outputs = output_arrays(result).loss_fn_outputs
    qs, lps, datums, rows, masked = [], [], [], [], False
    for i, (d, out) in enumerate(zip(data, outputs)):
        lp = out.get("logprobs")
        if lp is None:
            continue
        picked = _sampled(datum_inputs(d, f"data[{i}]"), lp)
        if picked is None:
            continue
        qs.append(picked[0])
        lps.append(picked[1])
        rows.append(picked[2])
        datums.append(np.full(picked[2].size, i))
        masked |= picked[3]
    if not qs or not sum(q.size for q in qs):
        return None
    q, lp = np.concatenate(qs), np.concatenate(lps)
    diff = q - lp
    datum, row = np.concatenate(datums), np.concatenate(rows)
    top = np.argsort(-np.abs(diff), kind="stable")[:_TOP]
    return (float(diff.mean()), float(0.5 * np.mean(diff * diff)), diff,
            [Position(index, int(datum[j]), int(row[j]), float(q[j]), float(lp[j]))
             for j in top], masked)


class _Sample:
    """A uniform sample of at most `capacity` values of a stream (reservoir
    sampling, Vitter's algorithm R, a batch at a time; seeded, so a report
    is reproducible)."""

    def __init__(self, capacity: int):
        self.values = np.empty(capacity)
        self.filled = 0
        self.seen = 0
        self.rng = np.random.default_rng(0)

    def add(self, x: np.ndarray) -> None:
        capacity = self.values.size
        take = min(capacity - self.filled, x.size)
        self.values[self.filled:self.filled + take] = x[:take]
        self.filled += take
        rest = x[take:]
        if rest.size:
            # element t of the stream (0-based) replaces a random slot with
            # probability capacity / (t + 1)
            t = self.seen + take + np.arange(rest.size)
            keep = self.rng.random(rest.size) * (t + 1) < capacity
            self.values[self.rng.integers(0, capacity, int(keep.sum()))] = rest[keep]
        self.seen += x.size

    def get(self) -> np.ndarray:
        return self.values[:self.filled].copy()


# ---- the report --------------------------------------------------------------


def _g(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def _calls_in(state: str, doc: str) -> property:
    return property(lambda report: sum(c.state == state for c in report.calls), doc=doc)


@dataclass
class WatchReport:
    """What a watcher has seen so far.

    calls: a CallInfo per call, in call order. findings_by_kind: the number
    of problems per FindingKind name. largest: per metric, the largest
    |server - recomputed| seen (a Difference). top_positions: the sampled
    tokens with the largest |q - lp| over all calls. q_minus_lp: q - lp over
    the sampled tokens of every call (a uniform sample of at most
    `sample_size` of them when there were more), q_minus_lp_count: how many
    there were in all."""

    calls: list
    findings_by_kind: dict
    largest: dict
    top_positions: list
    q_minus_lp: np.ndarray
    q_minus_lp_count: int

    @property
    def seen(self) -> int:
        return len(self.calls)

    verified = _calls_in("verified", "calls whose result was retrieved and verified")
    failed = _calls_in("failed", "calls that raised (the client's exception)")
    unverified = _calls_in("unverified", "calls the watcher could not verify")
    pending = _calls_in("pending", "calls whose result has not been retrieved")

    @property
    def problems(self) -> int:
        return sum(self.findings_by_kind.values())

    @property
    def drift(self) -> list:
        """(call index, kl_sample_train_v1, kl_sample_train_v2) of every
        call with sampler logprobs."""
        return [(c.index, c.kl_sample_train_v1, c.kl_sample_train_v2) for c in self.calls
                if c.kl_sample_train_v1 is not None]

    def __str__(self) -> str:
        lines = [f"calls: {self.seen} seen, {self.verified} verified, {self.failed} failed, "
                 f"{self.unverified} not verifiable, {self.pending} not retrieved"]
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.findings_by_kind.items()))
        lines.append(f"findings: {self.problems}" + (f" ({kinds})" if kinds else ""))
        for d in sorted(self.largest.values(), key=lambda d: d.name):
            lines.append(f"largest |server - recomputed| of {d.name}: {d.difference:.3g} "
                         f"(tolerance {d.tolerance:.3g}) in call {d.call}")
        drift = [c for c in self.calls if c.kl_sample_train_v1 is not None]
        if drift:
            lines.append("sampler vs trainer per call (over the "
                         + ("mask" if any(c.masked for c in drift) else "tokens with q != 0")
                         + "): call kl_sample_train_v1 kl_sample_train_v2 tokens")
            shown = drift[-20:]
            if len(drift) > len(shown):
                lines.append(f"  ({len(drift) - len(shown)} earlier calls not shown)")
            lines += [f"  {c.index} {c.kl_sample_train_v1:.6g} {c.kl_sample_train_v2:.6g} "
                      f"{c.sampled}" for c in shown]
            lines.append("largest |q - lp|: call data[datum][position] q lp")
            lines += [f"  {p.call} data[{p.datum}][{p.position}] {p.q:.6g} {p.lp:.6g}"
                      for p in self.top_positions]
        gaps = [c for c in self.calls if c.custom_logprob_gap is not None]
        if gaps:
            worst = max(gaps, key=lambda c: c.custom_logprob_gap)
            lines.append(f"forward_backward_custom: largest |forward - backward logprob| "
                         f"{worst.custom_logprob_gap:.3g} in call {worst.index}")
        seconds = [c.seconds for c in self.calls if c.state == "verified"]
        if seconds:
            lines.append(f"verification: {1e3 * float(np.median(seconds)):.1f} ms per call "
                         "(median)")
        return "\n".join(lines)

    def plot(self, path) -> None:
        """Draw the drift over calls (kl_sample_train_v1 and _v2 per call)
        and a histogram of q - lp into the image `path` (PNG, or what its
        suffix names). Needs matplotlib (Debian: python3-matplotlib)."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise fail(Status.ERR_UNSUPPORTED, "matplotlib",
                       "report.plot needs matplotlib (Debian: python3-matplotlib)") from None
        fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
        left, right = fig.subplots(1, 2)
        drift = self.drift
        if drift:
            x = [d[0] for d in drift]
            left.plot(x, [d[1] for d in drift], "o-", label="kl_sample_train_v1")
            left.plot(x, [d[2] for d in drift], "s-", label="kl_sample_train_v2")
            left.legend()
        else:
            left.text(0.5, 0.5, "no sampler logprobs", ha="center", va="center",
                      transform=left.transAxes)
        left.set_xlabel("call")
        left.set_title("sampler vs trainer drift per call")
        if self.q_minus_lp.size:
            right.hist(self.q_minus_lp, bins=100, log=True)
        right.set_xlabel("q - lp (sampled tokens)")
        shown = ("" if self.q_minus_lp.size == self.q_minus_lp_count
                 else f" ({self.q_minus_lp.size} of them drawn)")
        right.set_title(f"q - lp, {self.q_minus_lp_count} tokens{shown}")
        fig.savefig(path)


# ---- the watcher -------------------------------------------------------------


@contextlib.contextmanager
def _failures(record):
    """Hands an exception of the client's call to `record`, then lets it go
    on as it was (the same object); a timeout is not a failure."""
    try:
        yield
    except _NOT_YET:
        raise
    except Exception as exc:
        record(exc)
        raise


class _WatchedFuture:
    """The client's future, verified when its result is retrieved: result()
    and result_async() (and await) hand back exactly what the client's
    future gives, or raise exactly what it raises. Any other attribute is
    the future's own (e.g. AwaitableConcurrentFuture.future())."""

    def __init__(self, future, watcher, call, request):
        self._future = future
        self._watcher = watcher
        self._call = call
        self._request = request
        self._claimed = False
        self._lock = threading.Lock()

    def _claim(self):
        """The request, for the first retrieval only (verified once)."""
        with self._lock:
            if self._claimed:
                return None
            self._claimed = True
            request, self._request = self._request, None
            return request

    def _failed(self, exc):
        if self._claim() is not None:
            self._watcher._tl_settle(self._call, "failed", f"{type(exc).__name__}: {exc}")

    def result(self, timeout=None):
        with _failures(self._failed):
            value = self._future.result(timeout)
        request = self._claim()
        if request is not None:
            self._watcher._tl_check(self._call, request, value)
        return value

    async def result_async(self, timeout=None):
        with _failures(self._failed):
            value = await self._future.result_async(timeout)
        request = self._claim()
        if request is not None:  # off the event loop: other tasks go on meanwhile
            await asyncio.to_thread(self._watcher._tl_check, self._call, request, value)
        return value

    def __await__(self):
        return self.result_async().__await__()

    def __getattr__(self, name):
        return getattr(self._future, name)

    def __repr__(self) -> str:
        return f"<watched {self._future!r}>"


class Watcher:
    """A TrainingClient under watch (see tinkerloss.watch). Its own names:
    report() and watched_client; every other attribute is the client's."""

    def __init__(self, client, *, atol=None, rtol=None, on_finding="log",
                 sample_size=100_000):
        if not (on_finding in ("log", "raise") or callable(on_finding)):
            raise fail(Status.ERR_VALUE, "on_finding",
                       f'on_finding is {on_finding!r}, expected "log", "raise" or a callable')
        own = object.__setattr__
        own(self, "_tl_client", client)
        own(self, "_tl_atol", _tolerance(atol, "atol", 1e-5))
        own(self, "_tl_rtol", _tolerance(rtol, "rtol", 1e-5))
        own(self, "_tl_on_finding", on_finding)
        own(self, "_tl_lock", threading.Lock())
        own(self, "_tl_calls", [])
        own(self, "_tl_kinds", Counter())
        own(self, "_tl_largest", {})
        own(self, "_tl_top", [])
        own(self, "_tl_sample", _Sample(sample_size))
        own(self, "_tl_errors_said", set())

    @property
    def watched_client(self):
        """The TrainingClient this watcher wraps."""
        return self._tl_client

    def __getattr__(self, name):
        # through __dict__: on an instance not yet initialised (copy.copy
        # makes one and asks it for __setstate__) self._tl_client would
        # come back here forever
        client = self.__dict__.get("_tl_client")
        if client is None:
            raise AttributeError(name)
        attr = getattr(client, name)
        if name in _WRAPPED and callable(attr):
            return self._tl_wrap(name, attr)
        return attr

    def __setattr__(self, name, value):
        setattr(self._tl_client, name, value)

    def __delattr__(self, name):
        delattr(self._tl_client, name)

    def __dir__(self):
        return sorted(set(dir(self._tl_client)) | {"report", "watched_client"})

    def __repr__(self) -> str:
        return f"<tinkerloss.watch of {self._tl_client!r}>"

    # -- calls ------------------------------------------------------------------

    def _tl_wrap(self, name, method):
        if name.endswith("_async"):
            async def watched(*args, **kwargs):
                call, request, args, kwargs = self._tl_begin(name, args, kwargs)
                with _failures(functools.partial(self._tl_raised, call)):
                    future = await method(*args, **kwargs)
                return self._tl_future(future, call, request)
        else:
            def watched(*args, **kwargs):
                call, request, args, kwargs = self._tl_begin(name, args, kwargs)
                with _failures(functools.partial(self._tl_raised, call)):
                    future = method(*args, **kwargs)
                return self._tl_future(future, call, request)
        return functools.wraps(method)(watched)

    def _tl_begin(self, name, args, kwargs):
        """The CallInfo and the request of a call about to be made, and the
        arguments to make it with: the same objects, except that data which
        is an iterator is made a list first (so that both the client and
        the watcher can read it) and a custom loss is called through
        _CustomLoss. On any trouble, the call goes out as it came, unwatched.
        A custom loss's backward pass is a cross_entropy call (the SDK's
        surrogate for loss_type_input "logprobs", training_client.py
        _CUSTOM_BACKEND_LOSS_FN_BY_INPUT_TYPE; "cross_entropy" outright
        before it had that table)."""
        try:
            custom = name.startswith("forward_backward_custom")
            data = _argument(args, kwargs, 0, "data")
            if isinstance(data, Iterator):
                data = list(data)
                args, kwargs = _with_argument(args, kwargs, 0, "data", data)
            loss_fn = _argument(args, kwargs, 1, "loss_fn")
            request = _Request(list(data), "cross_entropy" if custom else loss_fn,
                               None if custom else _argument(args, kwargs, 2, "loss_fn_config"))
            if custom:
                request.custom = _CustomLoss(loss_fn)
                args, kwargs = _with_argument(args, kwargs, 1, "loss_fn", request.custom)
            with self._tl_lock:
                call = CallInfo(len(self._tl_calls), name,
                                "custom" if custom else str(loss_fn), len(request.data))
                self._tl_calls.append(call)
            return call, request, args, kwargs
        except Exception as exc:
            self._tl_own_error(None, exc)
            return None, None, args, kwargs

    def _tl_raised(self, call, exc):
        if call is not None:
            self._tl_settle(call, "failed", f"{type(exc).__name__}: {exc}")

    def _tl_future(self, future, call, request):
        if call is None:
            return future
        return _WatchedFuture(future, self, call, request)

    def _tl_own_error(self, call, exc):
        """The watcher's own trouble: logged (each distinct message once as a
        warning, then at debug level), never raised to the caller."""
        what = f"{type(exc).__name__}: {exc}"
        with self._tl_lock:
            first = what not in self._tl_errors_said
            self._tl_errors_said.add(what)
        where = call.describe() if call is not None else "a call"
        logger.log(logging.WARNING if first else logging.DEBUG,
                   "%s was not verified: %s", where, what, exc_info=first)

    def _tl_settle(self, call, state, error=None):
        with self._tl_lock:
            call.state, call.error = state, error

    # -- verification -------------------------------------------------------------

    def _tl_check(self, call, request, value):
        """Verify one retrieved result and report its findings. Raises only
        what on_finding asks for (FindingsError, or the callable's own
        exception)."""
        start = time.perf_counter()
        try:
            findings, notes = self._tl_verify(call, request, value)
        except Exception as exc:
            self._tl_settle(call, "unverified", f"{type(exc).__name__}: {exc}")
            self._tl_own_error(call, exc)
            return
        drift = None
        if request.custom is None:
            try:
                drift = _drift(call.index, request.data, value)
            except Exception as exc:  # the findings stand; the drift is left out
                self._tl_own_error(call, exc)
        try:
            self._tl_record(call, findings, notes, drift, time.perf_counter() - start)
        except Exception as exc:  # the report misses this call; its findings still go out
            self._tl_own_error(call, exc)
        if findings:
            self._tl_tell(call, findings, value)

    def _tl_verify(self, call, request, value):
        data, result, custom = request.data, value, request.custom
        if custom is not None:
            data, result = self._tl_surrogate(call, request, value)
        report = verify(data, request.loss_fn, request.loss_fn_config, result,
                        atol=self._tl_atol, rtol=self._tl_rtol)
        findings = [f for f in report.findings if not f.is_note]
        if custom is not None and "loss:sum" in custom.metric_names:
            # the custom loss's own loss:sum replaced the server's
            findings = [f for f in findings if f.kind != FindingKind.FINDING_NO_LOSS]
        return findings, [f for f in report.findings if f.is_note]

    def _tl_surrogate(self, call, request, value):
        """forward_backward_custom: the backward pass is a cross_entropy call
        on the datums' target_tokens with weights = -dC/dlogprobs of the
        custom loss C (training_client.py, forward_backward_custom_async),
        whose result carries the custom loss's metrics over the server's
        (add_custom_metrics). That call is verified: the request's
        consistency, the returned logprobs (positive, missing or infinite)
        and the server's metrics, loss:sum unless the custom loss returned
        one of its own. The forward pass's logprobs (those the custom loss
        saw) are compared with the backward pass's: the largest difference
        goes to the report."""
        custom = request.custom
        if custom.logprobs is None:
            raise fail(Status.ERR_MISSING, "loss_fn", "the custom loss was not called")
        if len(custom.logprobs) != len(request.data):
            raise fail(Status.ERR_SHAPE, "loss_fn", f"the custom loss saw "
                       f"{len(custom.logprobs)} logprob tensors for {len(request.data)} datums")
        data = []
        for i, (d, lp) in enumerate(zip(request.data, custom.logprobs)):
            if lp.grad is None:
                raise fail(Status.ERR_MISSING, "loss_fn",
                           f"the custom loss gave data[{i}]'s logprobs no gradient")
            inputs = _get(d, "loss_fn_inputs", f"data[{i}]")
            data.append({"model_input": _get(d, "model_input", f"data[{i}]"),
                         "loss_fn_inputs": {
                             "target_tokens": _get(inputs, "target_tokens",
                                                   f"data[{i}].loss_fn_inputs"),
                             "weights": -lp.grad.detach().numpy()}})
        metrics = _get(value, "metrics", "result")
        result = {"loss_fn_output_type": _get(value, "loss_fn_output_type", "result", None),
                  "loss_fn_outputs": _get(value, "loss_fn_outputs", "result"),
                  "metrics": {k: v for k, v in metrics.items()
                              if k not in custom.metric_names}}
        try:
            backward = output_arrays(result).loss_fn_outputs
            gaps = [np.max(np.abs(out["logprobs"].astype(np.float64).ravel()
                                  - lp.detach().double().numpy().ravel()), initial=0.0)
                    for out, lp in zip(backward, custom.logprobs)]
            with self._tl_lock:
                call.custom_logprob_gap = float(max(gaps, default=0.0))
        except Exception as exc:  # shapes that disagree are verify's to report
            logger.debug("%s: forward and backward logprobs not compared: %s",
                         call.describe(), exc)
        return data, result

    def _tl_record(self, call, findings, notes, drift, seconds):
        with self._tl_lock:
            call.state, call.findings, call.seconds = "verified", findings, seconds
            self._tl_kinds.update(f.kind.name for f in findings)
            for f in findings + notes:
                if f.kind not in (FindingKind.FINDING_METRIC, FindingKind.NOTE_METRIC) \
                        or f.local:
                    continue
                diff = abs(f.server - f.recomputed)
                best = self._tl_largest.get(f.name)
                if not math.isnan(diff) and (best is None or diff > best.difference):
                    self._tl_largest[f.name] = Difference(f.name, diff, f.tolerance, call.index,
                                                          f.server, f.recomputed)
            if drift is not None:
                v1, v2, diffs, top, masked = drift
                call.kl_sample_train_v1, call.kl_sample_train_v2 = v1, v2
                call.sampled, call.top, call.masked = diffs.size, top, masked
                self._tl_sample.add(diffs)
                merged = sorted(self._tl_top + top, key=lambda p: -abs(p.difference))
                self._tl_top[:] = merged[:_TOP_ALL]

    def _tl_tell(self, call, findings, value):
        how = self._tl_on_finding
        if how == "log":
            for f in findings:
                logger.warning("%s: %s", call.describe(), f)
        elif how == "raise":
            raise FindingsError(findings, call, value)
        else:
            how(list(findings), call)

    # -- the report ------------------------------------------------------------------

    def report(self) -> WatchReport:
        """What this watcher has seen so far (a snapshot; pending calls are
        not waited for)."""
        with self._tl_lock:
            return WatchReport(
                calls=[replace(c, findings=list(c.findings), top=list(c.top))
                       for c in self._tl_calls],
                findings_by_kind=dict(self._tl_kinds),
                largest=dict(self._tl_largest),
                top_positions=list(self._tl_top),
                q_minus_lp=self._tl_sample.get(),
                q_minus_lp_count=self._tl_sample.seen)


def watch(training_client, *, atol=None, rtol=None, on_finding="log") -> Watcher:
    """`training_client` (a tinker TrainingClient, of either SDK generation)
    with every forward and forward_backward result verified when it is
    retrieved: forward, forward_backward, their _async versions and
    forward_backward_custom (and forward_backward_custom_async) return the
    client's future wrapped; its result() or await gives exactly the object
    the client returned, after tinkerloss.verify has checked it against the
    request (the loss and metrics recomputed from the returned logprobs,
    the request's consistency, positive or non-finite logprobs). Every
    other attribute is the client's.

    atol, rtol: verify's tolerances (default 1e-5 each). on_finding: what a
    call with findings (problems; notes are not findings) does: "log" (one
    warning per finding on the logger "tinkerloss.watch"), "raise"
    (FindingsError, which carries the findings and the result) or a
    callable `(findings, call_info)` whose exceptions reach the caller (it
    runs where verification runs: the caller's thread, or a worker thread
    for result_async and await).

    The watcher never changes the request or the result, never waits for a
    future the caller has not asked for, and never fails a call by its own
    error: what it cannot verify it logs, and counts in report().
    Verification costs time on the caller's thread when a result is
    retrieved (result_async runs it in a worker thread); see docs/python.md for
    a measured figure."""
    return Watcher(training_client, atol=atol, rtol=rtol, on_finding=on_finding)

#!/usr/bin/python3
"""What tinkerloss.watch costs a training loop per call.

    /usr/bin/python3 bench/watch_cost.py [--datums 64] [--tokens 2048]
        [--runs 7] [--calls 3] [--generation new|old] [--threads T]
        [--python-path build/python]

A stand-in TrainingClient (python/tests/sdk_standins.py) answers a PPO
forward_backward of D datums x N tokens at once, with a right answer made
beforehand (logprobs and loss:sum). Each run makes C calls through the
client and C through the watcher, alternating call by call so that both see
the same machine; the run's cost of verification per call is the median
watched call less the median plain call. Printed: the median over the runs
and their range, the plain call's time, and tinkerloss.verify alone on the
same call (the larger part of the cost; the rest is reading the sampler and
trainer logprobs for the drift).

Run it with Debian's /usr/bin/python3 (its numpy and pydantic); the
watcher's verification runs the library with T threads (default: the
process's, all cores).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np


def workload(tl, gen, datums, tokens, seed=0):
    """D datums of N tokens (a Qwen-sized vocabulary's token ids), the
    sampler's logprobs q, the advantages, and the right answer: trainer
    logprobs close to q and the loss:sum the library computes from them."""
    rng = np.random.default_rng(seed)
    data, lps = [], []
    for _ in range(datums):
        ids = rng.integers(0, 151_000, tokens + 1)
        lp = -rng.exponential(0.7, tokens).astype(np.float32)
        q = np.minimum(lp + 0.02 * rng.standard_normal(tokens).astype(np.float32), 0)
        data.append(gen.Datum(model_input=gen.ModelInput.from_ints(ids[:-1].tolist()),
                              loss_fn_inputs={"target_tokens": ids[1:],
                                              "logprobs": q.astype(np.float32),
                                              "advantages": rng.standard_normal(tokens)
                                              .astype(np.float32)}))
        lps.append(lp)
    config = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    loss = tl.loss(data, "ppo", config, lps).loss
    answer = gen.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[{"logprobs": gen.TensorData.from_numpy(lp)} for lp in lps],
        metrics={"loss:sum": loss})
    return data, config, answer


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datums", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--generation", choices=["new", "old"], default="new")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--python-path", default=os.path.join(here, "..", "build", "python"))
    args = ap.parse_args()
    sys.path.insert(0, args.python_path)
    sys.path.insert(0, os.path.join(here, "..", "python", "tests"))
    import tinkerloss as tl
    import sdk_standins

    if args.threads:
        tl.set_num_threads(args.threads)
    gen = getattr(sdk_standins, args.generation)
    data, config, answer = workload(tl, gen, args.datums, args.tokens)
    client = gen.TrainingClient(lambda *request: answer)
    watcher = tl.watch(client, on_finding="raise")

    def timed(c):
        t0 = time.perf_counter()
        result = c.forward_backward(data, "ppo", config).result()
        seconds = time.perf_counter() - t0
        assert result is answer
        return seconds

    timed(client), timed(watcher)  # warm-up: the context's memory, the imports
    costs, plains, verifies = [], [], []
    for _ in range(args.runs):
        plain, watched = [], []
        for _ in range(args.calls):
            plain.append(timed(client))
            watched.append(timed(watcher))
        costs.append(statistics.median(watched) - statistics.median(plain))
        plains.append(statistics.median(plain))
        t0 = time.perf_counter()
        tl.verify(data, "ppo", config, answer)
        verifies.append(time.perf_counter() - t0)
    report = watcher.report()
    ms = 1e3
    print(f"watch_cost: {args.datums} datums x {args.tokens} tokens, ppo, "
          f"{args.generation} SDK types, threads: {tl.get_num_threads() or 'OpenMP default'}, "
          f"{args.runs} runs x {args.calls} calls")
    print(f"verification per call: median {ms * statistics.median(costs):.1f} ms "
          f"(runs: {ms * min(costs):.1f} to {ms * max(costs):.1f} ms); plain call "
          f"{ms * statistics.median(plains):.3f} ms; tinkerloss.verify alone "
          f"{ms * statistics.median(verifies):.1f} ms")
    print(f"{report.verified} calls verified, {report.problems} findings")


if __name__ == "__main__":
    main()

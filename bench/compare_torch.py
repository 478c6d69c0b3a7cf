#!/usr/bin/python3
"""tinkerloss against PyTorch CPU on the same workloads, in one run, and
what calling tinkerloss from Python costs over calling it from C.

    /usr/bin/python3 bench/compare_torch.py [--tokens N] [--vocab V]
        [--threads T] [--repeat R] [--rounds K]
        [--ppo-bench build/bench/ppo_bench] [--python-path build/python]

For each dtype (float32, bfloat16) and thread count it times, in PyTorch:
  fwd     log_softmax + gather of the target logprobs;
  fwdbwd  the same, then the reference PPO loss and backward() to the
          logits;
then runs ppo_bench --json on the same shapes right after (C calling the
library), and times the same PPO call from Python (tinkerloss.
forward_backward on float32 numpy arrays or bfloat16 torch tensors, the
gradient into a buffer given with out=, as ppo_bench writes into its own;
see python_buffers), and prints the medians, the speedup over PyTorch and
Python's overhead over C; torch_flt is PyTorch's minor page faults per
call.

Then, for float32 fwdbwd with the most threads, K rounds that alternate
ppo_bench (R calls) and the Python call (R calls): the per-round medians,
and Python's overhead as the median over the rounds with its range. On a
shared machine those rounds carry its noise, so the Python call is also
timed against the bare library call (tl_forward_backward through cffi, its
structs built once) in the same process, alternating call by call: on the
same workload (K x R calls each), and on one small enough (8 x 1000) for
the package's own cost per call to show, given as a fraction of
ppo_bench's median.

Run it with Debian's /usr/bin/python3 (its numpy and torch; another
python3 on PATH may lack them). Skips cleanly (exit 0) when torch is not
installed (Debian: python3-torch);
without the Python package (./run.sh build) only PyTorch and C are timed.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def ppo_bench_ms(exe, n, v, dtype, mode, threads, repeat):
    out = subprocess.run(
        [exe, "--tokens", str(n), "--vocab", str(v), "--dtype", dtype, "--mode", mode,
         "--threads", str(threads), "--repeat", str(repeat), "--json"],
        capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["ms_median"]


def faults_per_call(fn, calls=2):
    """Minor page faults per call of fn (getrusage): PyTorch's fresh output
    and gradient tensors are faulted in at every call, whose cost varies
    with the kernel, the machine and its load far more than the
    arithmetic does."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def timed(fn, repeat):
    """The median of `repeat` calls in milliseconds, after a warm-up call."""
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def load_tinkerloss(path):
    sys.path.insert(0, path)
    try:
        import tinkerloss
        return tinkerloss
    except ImportError as e:
        print(f"compare_torch: the Python package is not importable from {path} ({e}); "
              "run ./run.sh build. Timing PyTorch and C only.")
        return None


def python_buffers(torch, x, mode):
    """The Python path's logits and gradient buffer (None for fwd). float32
    goes as numpy arrays that numpy allocated (malloc, as ppo_bench's
    buffers are): the bare library call on buffers that torch allocated
    and filled measured 3.4% slower than on these, in one process,
    alternating, which is no cost of calling from Python. bfloat16 stays a
    torch tensor (numpy has no bfloat16)."""
    if x.dtype == torch.float32:
        logits = x.numpy().copy()
        return logits, (np.zeros_like(logits) if mode == "fwdbwd" else None)
    return x, (torch.zeros_like(x) if mode == "fwdbwd" else None)


def python_call(tl, logits, t, q, adv, out, threads):
    """The workload's PPO call from Python: tinkerloss.forward_backward of
    one datum (t, q, adv: numpy arrays), the gradient into `out` (None:
    forward only), allocated and touched once, as ppo_bench writes into its
    own buffer."""
    datum = {"model_input": {"chunks": []},
             "loss_fn_inputs": {"target_tokens": t, "logprobs": q, "advantages": adv}}
    grads = out is not None

    def call():
        return tl.forward_backward([datum], "ppo", None, logits=[logits], grads=grads,
                                   out=[out] if grads else None, threads=threads)
    return call


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--threads", type=int, default=0, help="0: 1 and all")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of the Python-over-C comparison (0: none)")
    ap.add_argument("--ppo-bench", default=os.path.join(here, "..", "build",
                                                        "bench", "ppo_bench"))
    ap.add_argument("--python-path", default=os.path.join(here, "..", "build", "python"))
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("compare_torch: torch is not installed (Debian: python3-torch); "
              "skipped")
        return 0
    if not os.path.exists(args.ppo_bench):
        print(f"compare_torch: {args.ppo_bench} not found; run ./run.sh build")
        return 2
    tl = load_tinkerloss(args.python_path)

    n, v = args.tokens, args.vocab
    threads = [args.threads] if args.threads else sorted({1, os.cpu_count() or 1})
    gen = torch.Generator().manual_seed(1234)
    x32 = torch.randn(n, v, generator=gen) * 3.0
    t = torch.randint(0, v, (n,), generator=gen)
    adv = torch.randn(n, generator=gen)

    print(f"compare_torch: N = {n}, V = {v}, torch {torch.__version__}, "
          f"median of {args.repeat}")
    print(f"{'dtype':5} {'mode':7} {'thr':>3} {'torch_ms':>10} {'torch_flt':>9} "
          f"{'tinkerloss_ms':>13} {'speedup':>8} {'python_ms':>10} {'py/C':>7}")
    for th in threads:
        torch.set_num_threads(th)
        for dtype_name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            x = x32.to(dt)
            with torch.no_grad():
                q = torch.log_softmax(x.float(), -1).gather(1, t[:, None]).squeeze(1) \
                    + 0.2 * torch.randn(n, generator=gen)

            def fwd():
                with torch.no_grad():
                    return torch.log_softmax(x, -1).gather(1, t[:, None])

            def fwdbwd():
                xx = x.detach().requires_grad_(True)
                lp = torch.log_softmax(xx, -1).gather(1, t[:, None]).squeeze(1)
                r = torch.exp(lp.float() - q)
                loss = -torch.min(r * adv, torch.clamp(r, 0.8, 1.2) * adv).sum()
                loss.backward()
                return xx.grad

            for mode, fn in (("fwd", fwd), ("fwdbwd", fwdbwd)):
                torch_ms = timed(fn, args.repeat)
                torch_flt = faults_per_call(fn)
                tl_ms = ppo_bench_ms(args.ppo_bench, n, v, dtype_name, mode, th, args.repeat)
                py = ""
                if tl is not None:
                    logits, out = python_buffers(torch, x, mode)
                    call = python_call(tl, logits, t.numpy(), q.float().numpy(), adv.numpy(),
                                       out, th)
                    py_ms = timed(call, args.repeat)
                    del logits, out, call
                    py = f" {py_ms:10.2f} {100 * (py_ms / tl_ms - 1):+6.1f}%"
                print(f"{dtype_name:5} {mode:7} {th:3d} {torch_ms:10.1f} {torch_flt:9.0f} "
                      f"{tl_ms:13.2f} {torch_ms / tl_ms:7.1f}x{py}", flush=True)
    if tl is not None and args.rounds > 0:
        overhead(args, tl, torch, x32, t, adv, max(threads))
    return 0


def bare_call(tl, x, t, q, adv, out, threads):
    """The same PPO call with no Python layer: tl_forward_backward through
    the package's cffi declarations, every struct built once."""
    ffi, lib = tl.ffi, tl.lib
    n, v = x.shape

    def tensor(a, dtype):
        return {"data": ffi.cast("void *", a.ctypes.data), "dtype": dtype, "ndim": 1,
                "shape": [n, 1]}

    datum = ffi.new("tl_datum *", {
        "target_tokens": tensor(t, lib.TL_I64), "logprobs": tensor(q, lib.TL_F32),
        "advantages": tensor(adv, lib.TL_F32),
        "logits": {"data": ffi.cast("void *", x.ctypes.data), "dtype": lib.TL_F32,
                   "rows": n, "vocab": v, "stride": v}})
    cfg = ffi.new("tl_loss_config *")
    ctx = ffi.gc(lib.tl_ctx_new(), lib.tl_ctx_free)
    err = ffi.new("tl_error *")
    lp = ffi.new("float[]", n)
    lps = ffi.new("float *[]", [lp])
    grad = ffi.new("tl_grad *", {"data": ffi.cast("void *", out.ctypes.data),
                                 "dtype": lib.TL_F32, "stride": v})
    metrics = ffi.new("tl_metrics *")
    batch = ffi.new("tl_batch *", {"data": datum, "ndata": 1})
    res = ffi.new("tl_results *", {"logprobs": lps, "grads": grad, "metrics": metrics})
    if lib.tl_loss_config_init(cfg, b"ppo", ffi.NULL, ffi.NULL, 0, err) or \
            lib.tl_ctx_set(ctx, lib.TL_PARAM_THREADS, threads, err):
        raise RuntimeError(ffi.string(err.message).decode())

    def call():
        if lib.tl_forward_backward(ctx, cfg, batch, res, err):
            raise RuntimeError(ffi.string(err.message).decode())
    return call, (datum, cfg, ctx, err, lp, lps, grad, metrics, batch, res)


def paired_us(tl, logits, t, q, adv, out, threads, calls):
    """Medians in microseconds of the Python call and of the bare call on
    float32 fwdbwd (numpy arrays), alternating call by call (both see the
    same machine; each goes first in turn), both writing `out`."""
    py = python_call(tl, logits, t, q, adv, out, threads)
    bare, keep = bare_call(tl, logits, t, q, adv, out, threads)
    times = {py: [], bare: []}
    for _ in range(max(1, calls // 10)):  # warm-up
        py()
        bare()
    for k in range(calls):
        # either goes first in turn, so that neither always follows the other
        for fn in ((py, bare) if k % 2 == 0 else (bare, py)):
            t0 = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - t0)
    tp, tb = times[py], times[bare]
    del keep
    return 1e6 * statistics.median(tp), 1e6 * statistics.median(tb)


def overhead(args, tl, torch, x, t, adv, th):
    """Python's overhead over ppo_bench on float32 fwdbwd: rounds that
    alternate the two, each the median of `repeat` calls; then the Python
    call against the bare library call in this process, alternating call
    by call, on the same workload and on a small one (the package's own
    cost per call)."""
    with torch.no_grad():
        q = torch.log_softmax(x, -1).gather(1, t[:, None]).squeeze(1) + 0.2 * torch.randn(
            x.shape[0], generator=torch.Generator().manual_seed(5))
    logits, out = python_buffers(torch, x, "fwdbwd")
    arrays = (t.numpy(), q.numpy(), adv.numpy())
    call = python_call(tl, logits, *arrays, out, th)
    c_ms, py_ms = [], []
    print(f"\nPython over C: f32 fwdbwd, {th} threads, {args.rounds} rounds of "
          f"{args.repeat} calls each")
    for k in range(args.rounds):
        c_ms.append(ppo_bench_ms(args.ppo_bench, args.tokens, args.vocab, "f32", "fwdbwd", th,
                                 args.repeat))
        py_ms.append(timed(call, args.repeat))
        print(f"round {k}: ppo_bench {c_ms[-1]:8.2f} ms, Python {py_ms[-1]:8.2f} ms, "
              f"{100 * (py_ms[-1] / c_ms[-1] - 1):+5.1f}%", flush=True)
    ratios = [p / c - 1 for p, c in zip(py_ms, c_ms)]
    med_c, med_py = statistics.median(c_ms), statistics.median(py_ms)
    print(f"medians: ppo_bench {med_c:.2f} ms (range {min(c_ms):.2f}-{max(c_ms):.2f}), "
          f"Python {med_py:.2f} ms (range {min(py_ms):.2f}-{max(py_ms):.2f}); "
          f"overhead {100 * (med_py / med_c - 1):+.1f}% "
          f"(per round {100 * min(ratios):+.1f}% to {100 * max(ratios):+.1f}%)")
    calls = args.rounds * args.repeat
    py_us, bare_us = paired_us(tl, logits, *arrays, out, th, calls)
    print(f"the same workload, the Python call and the bare library call (cffi) alternating, "
          f"{calls} each: {py_us / 1e3:.2f} and {bare_us / 1e3:.2f} ms, "
          f"{100 * (py_us / bare_us - 1):+.2f}%", flush=True)
    gen = torch.Generator().manual_seed(7)
    xs = torch.randn(8, 1000, generator=gen)
    ts = torch.randint(0, 1000, (8,), generator=gen)
    qs = torch.log_softmax(xs, -1).gather(1, ts[:, None]).squeeze(1)
    small = (xs.numpy(), ts.numpy(), qs.numpy(), torch.randn(8, generator=gen).numpy())
    py_us, bare_us = paired_us(tl, *small, np.zeros((8, 1000), np.float32), th, 2000)
    print(f"the package's own cost: {py_us - bare_us:.1f} us per call (8 x 1000: Python "
          f"{py_us:.1f} us, bare call {bare_us:.1f} us), "
          f"{100 * (py_us - bare_us) / (1e3 * med_c):.3f}% of ppo_bench's median", flush=True)


if __name__ == "__main__":
    sys.exit(main())

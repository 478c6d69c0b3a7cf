#!/usr/bin/python3
"""tinkerloss against PyTorch CPU on the same workloads, in one run.

    /usr/bin/python3 bench/compare_torch.py [--tokens N] [--vocab V]
        [--threads T] [--repeat R] [--ppo-bench build/bench/ppo_bench]

For each dtype (float32, bfloat16) and thread count it times, in PyTorch:
  fwd     log_softmax + gather of the target logprobs;
  fwdbwd  the same, then the reference PPO loss and backward() to the
          logits;
then runs ppo_bench --json on the same shapes right after, and prints both
medians and the speedup. Skips cleanly (exit 0) when torch is not
installed (Debian: python3-torch).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--threads", type=int, default=0, help="0: 1 and all")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ppo-bench", default=os.path.join(here, "..", "build",
                                                        "bench", "ppo_bench"))
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

    n, v = args.tokens, args.vocab
    threads = [args.threads] if args.threads else sorted({1, os.cpu_count() or 1})
    gen = torch.Generator().manual_seed(1234)
    x32 = torch.randn(n, v, generator=gen) * 3.0
    t = torch.randint(0, v, (n,), generator=gen)
    adv = torch.randn(n, generator=gen)

    def timed(fn):
        fn()  # warm-up
        ts = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(ts)

    print(f"compare_torch: N = {n}, V = {v}, torch {torch.__version__}, "
          f"median of {args.repeat}")
    print(f"{'dtype':5} {'mode':7} {'thr':>3} {'torch_ms':>10} "
          f"{'tinkerloss_ms':>13} {'speedup':>8}")
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
                torch_ms = timed(fn)
                out = subprocess.run(
                    [args.ppo_bench, "--tokens", str(n), "--vocab", str(v),
                     "--dtype", dtype_name, "--mode", mode, "--threads", str(th),
                     "--repeat", str(args.repeat), "--json"],
                    capture_output=True, text=True, check=True).stdout
                tl_ms = json.loads(out.strip().splitlines()[-1])["ms_median"]
                print(f"{dtype_name:5} {mode:7} {th:3d} {torch_ms:10.1f} "
                      f"{tl_ms:13.2f} {torch_ms / tl_ms:7.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

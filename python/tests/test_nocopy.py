"""No input array is copied: numpy's allocations are visible to
tracemalloc; torch's are not, so for tensors the process's peak resident
memory is measured in a fresh interpreter."""

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np

import tinkerloss as tl

N, V = 256, 20000  # 20 MB of float32 logits


def peak_during(fn):
    """Bytes numpy (and Python) allocated at the peak of fn() beyond what
    was allocated before it."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - before


def workload():
    g = np.random.default_rng(0)
    x = g.standard_normal((2, N // 2 + 1, V), dtype=np.float32)
    t = g.integers(0, V, (2, N // 2 + 1))
    return x, t


def test_numpy_inputs_are_not_copied():
    x, t = workload()
    xs, ts = x[:, :-1], t[:, 1:]  # strided views: 2 blocks
    out = np.empty(xs.shape, np.float32)
    g = np.ones(ts.shape, np.float32)
    logits_bytes = xs.size * 4
    assert peak_during(lambda: tl.logprobs(xs, ts)) < 64 * 1024
    assert peak_during(lambda: tl.logprobs_backward(xs, ts, g, out=out)) < 64 * 1024
    data = [{"model_input": {"chunks": []},
             "loss_fn_inputs": {"target_tokens": np.ascontiguousarray(ts[i]),
                                "weights": np.ones(N // 2, np.float32)}} for i in range(2)]
    peak = peak_during(lambda: tl.forward_backward(data, "cross_entropy", logits=list(xs),
                                                   out=list(out)))
    assert peak < 64 * 1024, peak
    # the measurement sees a copy: the same call on an explicit copy
    assert peak_during(lambda: tl.logprobs(xs.astype(np.float32), ts)) > logits_bytes


CHILD = r"""
import json, resource, sys, torch, numpy as np
import tinkerloss as tl
n, v, dtype = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
x = torch.randn(2, n + 1, v).to(getattr(torch, dtype))
t = torch.randint(0, v, (2, n + 1))
g = torch.ones(2, n)
tl.logprobs(x[:1, :2], t[:1, 1:3])  # load everything once
out = torch.empty(2, n, v, dtype=x.dtype)
out.fill_(0)
base = rss()
tl.logprobs(x[:, :-1], t[:, 1:])
tl.logprobs_backward(x[:, :-1], t[:, 1:], g, out=out)
tl.logprobs_backward(out, t[:, 1:], g, out=out)
print(json.dumps({"grew": rss() - base, "logits": x[:, :-1].numel() * x.element_size()}))
"""


def test_torch_inputs_are_not_copied():
    for dtype in ("float32", "bfloat16"):
        r = subprocess.run([sys.executable, "-c", CHILD, str(N // 2), str(V), dtype],
                           capture_output=True, text=True, env=dict(os.environ),
                           timeout=300)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        # a copy of the logits would raise the peak by their size
        assert got["grew"] < got["logits"] / 4, (dtype, got)

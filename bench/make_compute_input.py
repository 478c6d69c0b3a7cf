#!/usr/bin/python3
"""Inputs for timing `tinkerloss compute` on one datum of N tokens:

    /usr/bin/python3 bench/make_compute_input.py N V PREFIX

writes PREFIX.npy, float32 logits [N, V] normal with standard deviation 3
(as ppo_bench draws them; fixed seed), and PREFIX_request.json, a
cross_entropy request with weights whose N target tokens are drawn
uniformly from [0, V)."""
import json
import sys

import numpy


def main(n, v, prefix):
    n, v = int(n), int(v)
    rng = numpy.random.default_rng(0)
    logits = rng.standard_normal((n, v), dtype=numpy.float32)
    logits *= 3
    numpy.save(prefix + ".npy", logits)
    tokens = rng.integers(0, v, n + 1).tolist()
    request = {
        "data": [{
            "model_input": {"chunks": [{"type": "encoded_text",
                                        "tokens": tokens[:-1]}]},
            "loss_fn_inputs": {
                "target_tokens": {"data": tokens[1:], "dtype": "int64",
                                  "shape": [n]},
                "weights": {"data": [1.0] * n, "dtype": "float32",
                            "shape": [n]}}}],
        "loss_fn": "cross_entropy"}
    with open(prefix + "_request.json", "w") as f:
        json.dump(request, f)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])

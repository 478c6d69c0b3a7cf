"""The process's settings: default thread count and ISA tier."""

import numpy as np
import pytest
import torch

import tinkerloss as tl


def test_default_threads():
    before = tl.get_num_threads()
    try:
        tl.set_num_threads(3)
        assert tl.get_num_threads() == 3
    finally:
        tl.set_num_threads(0)
    assert tl.get_num_threads() == before
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(tl.Error) as info:
            tl.set_num_threads(bad)
        assert (info.value.status, info.value.arg) == (tl.Status.ERR_VALUE, "threads")


def test_every_supported_tier_computes_the_same_logprobs():
    tiers = tl.supported_isas()
    assert tiers[0] == "scalar" and tl.isa() in tiers
    rng = np.random.default_rng(4)
    x = (3 * rng.standard_normal((7, 5003))).astype(np.float32)
    t = rng.integers(0, 5003, 7)
    want = torch.log_softmax(torch.tensor(x, dtype=torch.float64), -1)[np.arange(7), t].numpy()
    active = tl.isa()
    try:
        for name in tiers:
            tl.set_isa(name)
            assert tl.isa() == name
            np.testing.assert_allclose(tl.logprobs(x, t), want, rtol=1e-6, atol=1e-6)
    finally:
        tl.set_isa(active)


def test_set_isa_errors():
    with pytest.raises(tl.Error, match=r"'sse' is not a tier \(scalar, avx2, avx512, neon\)") \
            as info:
        tl.set_isa("sse")
    assert (info.value.status, info.value.arg) == (tl.Status.ERR_VALUE, "isa")
    with pytest.raises(tl.Error) as info:
        tl.set_isa(None)
    assert info.value.status == tl.Status.ERR_VALUE
    # a tier of the other architecture is never supported
    other = "neon" if "neon" not in tl.supported_isas() else "avx2"
    active = tl.isa()
    with pytest.raises(tl.Error, match="not supported here") as info:
        tl.set_isa(other)
    assert info.value.status == tl.Status.ERR_UNSUPPORTED
    assert tl.isa() == active

"""tinkerloss.logprobs and logprobs_backward against PyTorch float64, on
random shapes, strides, dtypes and temperatures."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tinkerloss as tl

# The library's bounds (tinkerloss.h): logprobs within 1e-6 + 1 ulp of
# float64; gradient elements within 2e-5 relative, FLT_MIN absolute (with
# K > 1 targets, plus 1e-6 of the magnitudes of a target element's two
# parts, whose difference it is: p_j is known to 1e-6).
LP_ATOL = 2e-6
GRAD_RTOL, GRAD_ATOL = 2e-5, 1e-30
GRAD_P_REL = 1e-6


def reference(x64, targets, temperature, grad_lp=None, grad_ent=None):
    """logprobs, lse, entropy and the gradient in float64 autograd."""
    x = x64.clone().requires_grad_(True)
    z = x / temperature
    logp = torch.log_softmax(z, -1)
    t = targets if targets.dim() == z.dim() else targets[..., None]
    lp = logp.gather(-1, t).reshape(targets.shape)
    ent = -(logp.exp() * logp).sum(-1)
    grad = None
    if grad_lp is not None:
        total = (lp * grad_lp.double()).sum()
        if grad_ent is not None:
            total = total + (ent * grad_ent.double()).sum()
        total.backward()
        grad = x.grad
    return lp.detach(), torch.logsumexp(z, -1).detach(), ent.detach(), grad


@st.composite
def cases(draw):
    """A logits buffer, a view of it with strided rows, and targets."""
    lead = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    v = draw(st.integers(1, 300))
    pad = draw(st.integers(0, 5))  # elements between rows
    k = draw(st.sampled_from([0, 1, 3]))  # 0: targets [...]
    temperature = draw(st.sampled_from([1.0, 0.7, 2.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    buf = torch.randn(*lead, v + pad, generator=g) * 3
    shape = tuple(lead) + ((k,) if k else ())
    targets = torch.randint(0, v, shape, generator=g)
    return buf, v, targets, temperature, draw(st.booleans())


def close_lp(got, want):
    np.testing.assert_allclose(np.asarray(got, np.float64), want.numpy(), rtol=1.2e-7,
                               atol=LP_ATOL)


@settings(max_examples=60, deadline=None)
@given(cases())
def test_logprobs_against_float64(case):
    buf, v, targets, temperature, use_torch = case
    x = buf[..., :v]  # rows v + pad apart
    x64 = x.double()
    lp_ref, lse_ref, ent_ref, _ = reference(x64, targets, temperature)
    logits = x if use_torch else x.numpy()
    tgt = targets if use_torch else targets.numpy()
    lp, lse, ent = tl.logprobs(logits, tgt, temperature=temperature, return_lse=True,
                               return_entropy=True)
    assert type(lp) is type(logits) and tuple(lp.shape) == tuple(targets.shape)
    close_lp(lp, lp_ref)
    np.testing.assert_allclose(np.asarray(lse, np.float64), lse_ref.numpy(), rtol=2e-7,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(ent, np.float64), ent_ref.numpy(), rtol=1e-5,
                               atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(cases(), st.booleans())
def test_backward_against_float64(case, with_entropy):
    buf, v, targets, temperature, use_torch = case
    x = buf[..., :v]
    g = torch.Generator().manual_seed(7)
    grad_lp = torch.randn(targets.shape, generator=g)
    grad_ent = torch.randn(x.shape[:-1], generator=g) if with_entropy else None
    _, _, _, want = reference(x.double(), targets, temperature, grad_lp, grad_ent)
    conv = (lambda a: a) if use_torch else (lambda a: None if a is None else a.numpy())
    got = tl.logprobs_backward(conv(x), conv(targets), conv(grad_lp),
                               grad_entropy=conv(grad_ent), temperature=temperature)
    assert type(got) is type(conv(x)) and tuple(got.shape) == tuple(x.shape)
    got = np.asarray(got, np.float64)
    if with_entropy:  # the factor g + ge (log p + H) may cancel: 2e-5 of the row's largest
        scale = np.abs(want.numpy()).max(-1, keepdims=True)
        assert (np.abs(got - want.numpy()) <= GRAD_RTOL * scale + GRAD_ATOL).all()
    elif targets.dim() == x.dim():  # K targets: a target element is
        # (g_j (1 - p_j) - (G - g_j) p_j) / T, whose two parts may cancel
        p = torch.softmax(x.double() / temperature, -1)
        g_j = torch.zeros_like(p).scatter_add_(-1, targets, grad_lp.double())
        G = grad_lp.double().sum(-1, keepdim=True)
        parts = ((g_j.abs() * (1 - p) + (G - g_j).abs() * p) / temperature).numpy()
        bound = GRAD_RTOL * np.abs(want.numpy()) + GRAD_P_REL * parts + GRAD_ATOL
        assert (np.abs(got - want.numpy()) <= bound).all()
    else:
        np.testing.assert_allclose(got, want.numpy(), rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_slice_of_a_batch_in_place():
    """logits[:, :-1] of [B, L, V] with tokens[:, 1:]: no copy, B blocks."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, 50, generator=g)
    tokens = torch.randint(0, 50, (3, 6), generator=g)
    lp = tl.logprobs(x[:, :-1], tokens[:, 1:])
    want = torch.log_softmax(x.double(), -1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    close_lp(lp, want)
    grad = tl.logprobs_backward(x[:, :-1], tokens[:, 1:], torch.ones(3, 5))
    xx = x.double().requires_grad_(True)
    torch.log_softmax(xx[:, :-1], -1).gather(-1, tokens[:, 1:, None]).sum().backward()
    np.testing.assert_allclose(grad.numpy(), xx.grad[:, :-1].numpy(), rtol=GRAD_RTOL,
                               atol=GRAD_ATOL)


def test_bfloat16_logits():
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(7, 33, generator=g) * 4).bfloat16()
    t = torch.randint(0, 33, (7,), generator=g)
    lp = tl.logprobs(x, t, temperature=0.7)
    want, _, _, grad_want = reference(x.double(), t, 0.7, torch.full((7,), -1.0))
    assert lp.dtype == torch.float32
    close_lp(lp, want)
    grad = tl.logprobs_backward(x, t, torch.full((7,), -1.0), temperature=0.7)
    assert grad.dtype == torch.bfloat16  # as autograd gives bfloat16 logits
    assert torch.equal(grad, grad_want.float().bfloat16())  # rounded once, to nearest even
    grad32 = tl.logprobs_backward(x, t, torch.full((7,), -1.0), temperature=0.7,
                                  grad_dtype=torch.float32)
    assert grad32.dtype == torch.float32
    np.testing.assert_allclose(grad32.numpy(), grad_want.numpy(), rtol=GRAD_RTOL, atol=1e-30)


def test_gradient_in_place_over_the_logits():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 9)).astype(np.float32)
    t = rng.integers(0, 9, 4)
    g = rng.standard_normal(4).astype(np.float32)
    want = tl.logprobs_backward(x, t, g)
    got = tl.logprobs_backward(x, t, g, out=x)
    assert got is x
    np.testing.assert_array_equal(x, want)


def test_out_receives_the_gradient_with_its_strides():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 9)).astype(np.float32)
    t = rng.integers(0, 9, 4)
    g = rng.standard_normal(4).astype(np.float32)
    big = np.full((4, 12), 7.0, np.float32)
    got = tl.logprobs_backward(x, t, g, out=big[:, :9])
    np.testing.assert_array_equal(big[:, :9], tl.logprobs_backward(x, t, g))
    assert (big[:, 9:] == 7.0).all() and got.base is big


def test_empty_and_single_row():
    x = np.zeros((0, 5), np.float32)
    assert tl.logprobs(x, np.zeros(0, np.int64)).shape == (0,)
    one = np.array([0.0, 1.0, 2.0], np.float32)
    lp = tl.logprobs(one, np.array(2))
    assert lp.shape == () and abs(float(lp) - (2 - np.log(np.exp(one).sum()))) < 1e-6


def test_threads_do_not_change_the_bits():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((64, 1000)).astype(np.float32)
    t = rng.integers(0, 1000, 64)
    one = tl.logprobs(x, t, threads=1)
    for n in (2, 3, None):
        assert np.array_equal(tl.logprobs(x, t, threads=n), one)

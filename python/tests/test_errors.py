"""Every way a call can go wrong raises tinkerloss.Error with the status,
the argument, the index and a message that says what to do; nothing is
written before the arguments are checked."""

import numpy as np
import pytest
import torch

import tinkerloss as tl
from tinkerloss import Status as S

X = np.arange(24, dtype=np.float32).reshape(4, 6) / 7
Y = np.zeros((4, 7), np.float32)
T = np.array([1, 0, 5, 2])
G = np.ones(4, np.float32)


def raises(status, arg, match, fn, *args, index=-1, **kw):
    with pytest.raises(tl.Error, match=match) as info:
        fn(*args, **kw)
    e = info.value
    assert (e.status, e.arg, e.index) == (status, arg, index), str(e)
    assert isinstance(e.status, tl.Status) and e.message in str(e)
    return e


def datum(**inputs):
    return {"model_input": {"chunks": []}, "loss_fn_inputs": inputs}


ARRAY_CASES = [
    # (status, arg, message, call)
    (S.ERR_DTYPE, "logits", "float64, expected float32 or bfloat16",
     lambda: tl.logprobs(X.astype(np.float64), T)),
    (S.ERR_DTYPE, "logits", "list, expected a numpy array or a torch tensor",
     lambda: tl.logprobs(X.tolist(), T)),
    (S.ERR_DTYPE, "targets", "int32, expected int64",
     lambda: tl.logprobs(X, T.astype(np.int32))),
    (S.ERR_SHAPE, "logits", "0-dimensional", lambda: tl.logprobs(np.array(1, np.float32), T)),
    (S.ERR_SHAPE, "targets", r"targets has shape \[3\]", lambda: tl.logprobs(X, T[:3])),
    (S.ERR_SIZE, "logits", r"strided last dimension \(stride 2\).*\.contiguous\(\)",
     lambda: tl.logprobs(np.zeros((4, 12), np.float32)[:, ::2], T)),
    (S.ERR_SIZE, "logits", "negative strides", lambda: tl.logprobs(X[::-1], T)),
    (S.ERR_SIZE, "logits", "rows 0 elements apart, fewer than the 6",
     lambda: tl.logprobs(np.broadcast_to(X[0], (4, 6)), T)),
    (S.ERR_SIZE, "targets", "not contiguous over its leading dimensions",
     lambda: tl.logprobs(X, np.array([[1, 9], [0, 9], [5, 9], [2, 9]])[:, 0])),
    (S.ERR_SIZE, "targets", "65 targets per row",
     lambda: tl.logprobs(X, np.zeros((4, 65), np.int64))),
    (S.ERR_UNSUPPORTED, "logits", r"on meta.*move it there with \.cpu\(\)",
     lambda: tl.logprobs(torch.empty(4, 6, device="meta"), torch.tensor(T))),
    (S.ERR_UNSUPPORTED, "logits", "sparse",
     lambda: tl.logprobs(torch.tensor(X).to_sparse(), torch.tensor(T))),
    (S.ERR_VALUE, "out", "read-only",
     lambda: tl.logprobs_backward(X, T, G, out=np.broadcast_to(X, X.shape))),
    (S.ERR_VALUE, "out", r"requires grad.*out\.detach\(\)",
     lambda: tl.logprobs_backward(torch.tensor(X), torch.tensor(T), torch.tensor(G),
                                  out=torch.zeros(4, 6, requires_grad=True))),
    (S.ERR_SHAPE, "out", r"out has shape \[4, 5\]",
     lambda: tl.logprobs_backward(X, T, G, out=np.zeros((4, 5), np.float32))),
    (S.ERR_VALUE, "out", "overlaps the logits without being them",
     lambda: tl.logprobs_backward(Y[:, :6], T, G, out=Y[:, 1:])),
    (S.ERR_DTYPE, "out", "out is float32 but grad_dtype is bfloat16",
     lambda: tl.logprobs_backward(X, T, G, out=np.zeros_like(X), grad_dtype="bfloat16")),
    (S.ERR_DTYPE, "grad_dtype", "numpy has no bfloat16",
     lambda: tl.logprobs_backward(X, T, G, grad_dtype=torch.bfloat16)),
    (S.ERR_SHAPE, "grad_logprobs", r"grad_logprobs has shape \[3\]",
     lambda: tl.logprobs_backward(X, T, G[:3])),
    (S.ERR_SHAPE, "grad_entropy", r"grad_entropy has shape \[2\]",
     lambda: tl.logprobs_backward(X, T, G, grad_entropy=G[:2])),
    (S.ERR_VALUE, "threads", "threads must be a whole number", lambda: tl.logprobs(X, T, threads=-1)),
    (S.ERR_VALUE, "temperature", "temperature must be a number",
     lambda: tl.logprobs(X, T, temperature="hot")),
]


@pytest.mark.parametrize("status, arg, message, call", ARRAY_CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(ARRAY_CASES)])
def test_array_errors(status, arg, message, call):
    raises(status, arg, message, call)


def test_library_errors_carry_index_and_message():
    bad = X.copy()
    bad[2, 3] = np.nan
    raises(S.ERR_BAD_ROW, "logits", "NaN", tl.logprobs, bad, T, index=2)
    raises(S.ERR_TOKEN, "targets", "outside", tl.logprobs, X, np.array([1, 0, 6, 2]), index=2)
    raises(S.ERR_VALUE, "temperature", "temperature", tl.logprobs, X, T, temperature=0.0)
    g = G.copy()
    g[3] = np.inf
    raises(S.ERR_VALUE, "grad_logprobs", "", tl.logprobs_backward, X, T, g, index=3)


def test_block_errors_index_the_whole_array():
    x = np.zeros((3, 5, 8), np.float32)
    tokens = np.zeros((3, 6), np.int64)
    tokens[2, 4] = 99  # row 1 of block 2 of x[:, :4]
    raises(S.ERR_TOKEN, "targets", r"targets\[3\] = 99 .*index 11 of the whole array",
           tl.logprobs, x[:, :4], tokens[:, 1:5], index=11)


def test_nothing_is_written_when_an_argument_is_wrong():
    out = np.full_like(X, 3.0)
    with pytest.raises(tl.Error):
        tl.logprobs_backward(X, np.array([1, 0, 6, 2]), G, out=out)
    assert (out == 3.0).all()


def test_batch_errors():
    good = datum(target_tokens=np.array([1, 2]), weights=np.ones(2, np.float32))
    lg = [np.zeros((2, 4), np.float32)]
    raises(S.ERR_CONFIG, "data[0].loss_fn_inputs.maks", "not an input of any loss",
           tl.forward_backward, [datum(target_tokens=np.array([1, 2]),
                                       weights=np.ones(2, np.float32),
                                       maks=np.ones(2, np.float32))], "cross_entropy",
           logits=lg)
    raises(S.ERR_SHAPE, "data[0].loss_fn_inputs.weights", "", tl.forward_backward,
           [datum(target_tokens=np.array([1, 2]), weights=np.ones(3, np.float32))],
           "cross_entropy", logits=lg)
    raises(S.ERR_CONFIG, "loss_fn", "", tl.forward_backward, [good], "xent", logits=lg)
    raises(S.ERR_CONFIG, "loss_fn_config", "", tl.forward_backward, [good], "cross_entropy",
           {"beta": 1.0}, logits=lg, index=0)
    raises(S.ERR_MISSING, "loss_fn_config.beta", "", tl.forward_backward, [good], "dro", {},
           logits=lg)
    raises(S.ERR_SHAPE, "logits", r"one \[N, V\] array per datum \(1\)", tl.forward_backward,
           [good], "cross_entropy", logits=lg * 2)
    raises(S.ERR_SHAPE, "logits", r"\[2, V\]", tl.forward_backward, [good], "cross_entropy",
           logits=np.zeros((3, 4), np.float32))
    raises(S.ERR_SHAPE, "data[0].logits", "", tl.forward_backward, [good], "cross_entropy",
           logits=[np.zeros((3, 4), np.float32)])
    raises(S.ERR_VALUE, "out[0]", "read-only", tl.forward_backward, [good], "cross_entropy",
           logits=lg, out=[np.broadcast_to(np.zeros(4, np.float32), (2, 4))])
    raises(S.ERR_CONFIG, "out", "grads=False", tl.forward_backward, [good], "cross_entropy",
           logits=lg, out=lg, grads=False)
    raises(S.ERR_MISSING, "data[0].loss_fn_inputs.target_tokens", "missing",
           tl.forward_backward, [datum(weights=np.ones(2, np.float32))], "cross_entropy",
           logits=lg)
    raises(S.ERR_VALUE, "data", "expected a list of datums", tl.forward_backward, good,
           "cross_entropy", logits=lg)
    raises(S.ERR_SHAPE, "logprobs[0]", r"shape \[3\]", tl.loss, [good], "cross_entropy", None,
           [np.zeros(3, np.float32)])
    raises(S.ERR_SIZE, "logprobs[0]", "not contiguous", tl.loss, [good], "cross_entropy", None,
           [np.zeros(4, np.float32)[::2]])


def test_objective_errors():
    raises(S.ERR_CONFIG, "estimator", "'k4'", tl.kl_estimate, G, G, "k4")
    raises(S.ERR_SHAPE, "ref_logprobs", "3 values, expected 4", tl.kl_estimate, G, G[:3])
    raises(S.ERR_VALUE, "advantages[0]", "read-only", tl.kl_penalty, [G], [G],
           [np.broadcast_to(np.float32(0), (4,))], coef=0.1)
    raises(S.ERR_SHAPE, "logprobs", "same length", tl.kl_penalty, [G], [G, G], [G.copy()],
           coef=0.1)
    two = [datum(target_tokens=np.array([1]), weights=np.ones(1, np.float32))] * 3
    raises(S.ERR_SIZE, "ndata", "pairs", tl.dpo_loss, two, [G[:1]] * 3, [G[:1]] * 3)
    raises(S.ERR_MISSING, "turns[0].action", "no action", tl.datums_from_trajectory,
           [{"observation": [1, 2], "action_logprobs": []}], 1.0)


def test_error_pickles_and_prints():
    import pickle
    e = tl.Error(S.ERR_SHAPE, "x", 3, "x: bad")
    back = pickle.loads(pickle.dumps(e))
    assert (back.status, back.arg, back.index, back.message) == (S.ERR_SHAPE, "x", 3, "x: bad")
    assert str(e) == "x: bad (ERR_SHAPE, index 3)"
    assert str(tl.Error(S.ERR_VALUE, "t", -1, "too hot")) == "t: too hot (ERR_VALUE)"

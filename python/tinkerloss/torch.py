"""tinkerloss inside PyTorch's autograd.

    import tinkerloss.torch as tlt
    lp = tlt.logprobs(logits, targets)            # differentiable in logits
    loss_fn = tlt.builtin_loss("ppo", {"clip_low_threshold": 0.8})
    training_client.forward_backward_custom(data, loss_fn)

The gradients are the library's: logprobs' backward is
tl_logprobs_backward, a loss's gradient comes with its value from the
same call. Neither is differentiable twice.
"""

from __future__ import annotations

import torch

from . import _batch, _objectives, _ops

__all__ = ["logprobs", "builtin_loss", "dpo_loss"]


class _Logprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature):
        ctx.save_for_backward(logits, targets)
        ctx.temperature = temperature
        return _ops.logprobs(logits.detach(), targets, temperature=temperature)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, targets = ctx.saved_tensors
        grad_logits = None
        if ctx.needs_input_grad[0]:
            grad_logits = _ops.logprobs_backward(
                logits.detach(), targets, grad.contiguous().float(),
                temperature=ctx.temperature)
        return grad_logits, None, None


def logprobs(logits, targets, temperature=1.0):
    """tinkerloss.logprobs as a differentiable function of the logits
    (float32 or bfloat16 [..., V]; the gradient has the logits' dtype)."""
    return _Logprobs.apply(logits, targets, temperature)


class _Loss(torch.autograd.Function):
    """A loss of the per-datum logprobs whose value and gradient a library
    call gives at once: `compute(arrays)` returns a LossResult."""

    @staticmethod
    def forward(ctx, compute, *logprobs):
        result = compute([lp.detach() for lp in logprobs])
        ctx.grads = result.grad_logprobs
        ctx.metrics = result.metrics
        dtype = logprobs[0].dtype if logprobs else torch.float32
        return torch.tensor(result.loss, dtype=dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return (None, *(grad * g for g in ctx.grads))


def _apply(compute, logprobs_list):
    holder = {}

    def run(arrays):
        holder["result"] = compute(arrays)
        return holder["result"]

    loss = _Loss.apply(run, *logprobs_list)
    return loss, dict(holder["result"].metrics)


def builtin_loss(loss_fn, loss_fn_config=None, *, inputs=None):
    """A custom-loss callable `(data, logprobs_list) -> (loss, metrics)` for
    forward_backward_custom that is the server's built-in loss: the same
    value (a torch scalar of the logprobs' dtype), the same metrics
    (loss:sum, ratio:mean, ...) and, through loss.backward(), the same
    dloss/dlogprobs.

    The SDK's forward_backward_custom accepts only target_tokens and weights
    in the datums (training_client.py, _get_custom_loss_forward_data), so
    the other inputs of a loss (the sampler's logprobs, the advantages, a
    mask, per-token thresholds) may come as `inputs`: one mapping per datum
    of input name to array, in datum order.
    """
    _batch.loss_config(loss_fn, loss_fn_config)  # a bad name or key fails here

    def compute_loss(data, logprobs_list):
        return _apply(lambda lps: _batch.loss(data, loss_fn, loss_fn_config, lps,
                                              extra_inputs=inputs), logprobs_list)

    return compute_loss


def dpo_loss(ref_logprobs, *, beta=0.1):
    """The cookbook's DPO as a custom-loss callable for
    forward_backward_custom (datums in (chosen, rejected) pairs with
    weights; ref_logprobs one float32 array per datum), as
    tinkerloss.dpo_loss computes it."""

    def compute_loss(data, logprobs_list):
        return _apply(lambda lps: _objectives.dpo_loss(data, lps, ref_logprobs, beta=beta),
                      logprobs_list)

    return compute_loss

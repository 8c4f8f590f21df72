"""Stateless core of Decoupled Neural Interfaces (Jaderberg et al., arXiv 1608.05343).

Everything that touches gradients lives here, once: how a synthetic gradient is delivered to the part
below a cut, how the gradient arriving from above becomes the synthesizer's regression target, how a
synthetic input replaces a real one (forward unlock), the synthesizer loss, and the cosine used to
judge synthetic gradients.

Scale convention. Training losses are means over the batch, so the true gradient of one example's
activation is O(1/B). Synthesizers instead predict the *per-example* gradient, ``B * dL/dh``, whose
size does not depend on the batch size; it is divided by ``B`` again when delivered. Without this the
regression targets shrink with the batch and the synthesizers barely learn.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

GradientObserver = Callable[[Tensor, Tensor], None]
"""Called as ``observer(prediction, target)`` in backward, both detached: ``(synthetic_grad,
target_grad)`` at per-example scale at a cut, ``(synthetic input, real activation)`` at a forward unlock."""


def regression_target(grad: Tensor) -> Tensor:
    """A synthesizer's target from the gradient ``dL/dh`` ``(B, *features)`` that arrived at its cut: the
    per-example gradient ``B * dL/dh``. With ``delivered_gradient``, the one place the scale convention lives:
    a cut, a pipeline stage and a recurrent boundary all convert through these two."""
    return grad * grad.shape[0]


def delivered_gradient(synthetic_grad: Tensor) -> Tensor:
    """The gradient ``dL/dh`` that a synthetic gradient (per-example scale, ``(B, *features)``) stands for,
    as it is handed to the graph below the cut: ``synthetic_grad / B``."""
    return synthetic_grad / synthetic_grad.shape[0]


def synthesizer_loss(synthetic_grad: Tensor, target_grad: Tensor) -> Tensor:
    """The L2 regression loss of a synthesizer (paper section 2): squared error summed over each
    example's features and averaged over the batch (dim 0).

    Summing over features keeps each example's gradient signal independent of the activation's size;
    averaging over the batch makes the loss's scale independent of the batch size.
    Both tensors have shape ``(B, *features)``; returns a scalar.
    """
    return (synthetic_grad - target_grad).pow(2).flatten(1).sum(dim=1).mean()


def synthesizer_loss_grad(synthetic_grad: Tensor, target_grad: Tensor) -> Tensor:
    """The gradient of ``synthesizer_loss`` w.r.t. ``synthetic_grad``, in closed form.

    Used inside every cut's backward, where building a graph for the loss and differentiating it
    would cost more than the synthesizer itself; a test holds it equal to autograd of the loss.
    """
    return torch.sub(synthetic_grad, target_grad).mul_(2.0 / synthetic_grad.shape[0])


def gradient_cosine(synthetic_grad: Tensor, target_grad: Tensor) -> Tensor:
    """Cosine similarity between the whole batch's synthetic and target gradients ``(B, *features)``.

    Over the batch rather than averaged per example, because the block below updates from the whole
    tensor (its weight gradient is linear in it): examples with large gradients weigh more, and a
    well-classified example, whose true gradient is nearly zero noise, cannot drag the score down.
    """
    return torch.nn.functional.cosine_similarity(
        synthetic_grad.flatten(), target_grad.flatten(), dim=0, eps=1e-12
    )


class _SyntheticGradient(torch.autograd.Function):
    """Identity in forward; in backward, sends the synthetic gradient down and trains the synthesizer.

    Backward receives ``grad_output`` = dL/dh from whatever lies above the cut: the true gradient at
    the top cut, or the next cut's synthetic gradient backpropagated through the next block (the
    bootstrapped target) when the cut above is decoupled too. It returns
    - for ``activation``: ``synthetic_grad / B`` (update unlock: the block below never sees the true
      gradient), or ``grad_output`` itself when ``pass_target_grad`` is set;
    - for ``synthetic_grad``: the gradient of ``synthesizer_loss`` towards ``B * grad_output``, which
      autograd carries on into the synthesizer's parameters.
    """

    @staticmethod
    def forward(ctx, activation, synthetic_grad, pass_target_grad, observers):  # noqa: D401
        ctx.save_for_backward(synthetic_grad)
        ctx.pass_target_grad = pass_target_grad
        ctx.observers = observers
        return activation.view_as(activation)

    @staticmethod
    def backward(ctx, grad_output):
        synthetic_grad = ctx.saved_tensors[0].detach()  # a saved tensor still says it requires grad
        target_grad = regression_target(grad_output)  # per-example scale, (B, *features); no graph in backward
        for observer in ctx.observers:
            observer(synthetic_grad, target_grad)

        grad_activation = None
        if ctx.needs_input_grad[0]:
            grad_activation = grad_output if ctx.pass_target_grad else delivered_gradient(synthetic_grad)
        grad_synthetic = None
        if ctx.needs_input_grad[1]:
            grad_synthetic = synthesizer_loss_grad(synthetic_grad, target_grad)
        return grad_activation, grad_synthetic, None, None


def synthetic_gradient(
    activation: Tensor,
    synthetic_grad: Tensor,
    *,
    pass_target_grad: bool = False,
    observers: Iterable[GradientObserver] = (),
) -> Tensor:
    """Place a cut on ``activation``: returns a tensor equal to it whose backward delivers
    ``synthetic_grad`` (per-example scale, same shape as ``activation``) to the graph below and
    regresses ``synthetic_grad`` onto the gradient arriving from above.

    ``synthetic_grad`` must be computed from a detached ``activation`` so that the synthesizer's loss
    does not leak into the block below. With ``pass_target_grad=True`` the arriving gradient is passed
    down unchanged (backprop) while the synthesizer still learns: for measuring synthesizers.
    ``observers`` see each (synthetic, target) pair during backward, for metrics.
    """
    if synthetic_grad.shape != activation.shape:
        raise ValueError(
            f"synthetic gradient has shape {tuple(synthetic_grad.shape)} but the activation has "
            f"{tuple(activation.shape)}: a synthesizer must return a tensor shaped like its input"
        )
    return _SyntheticGradient.apply(activation, synthetic_grad, pass_target_grad, tuple(observers))


class _SyntheticInput(torch.autograd.Function):
    """Returns the predicted input in forward; in backward, trains the prediction and hands the
    arriving gradient to the real activation.

    Paper section 3.3 (complete unlock): the block above runs on ``predicted`` = I(x) instead of
    waiting for the real ``activation``. Backward receives dL/d(predicted) from that block and returns
    - for ``activation``: that same gradient, so a cut on the real activation below still gets its
      (bootstrapped) target, evaluated at the synthetic input;
    - for ``predicted``: the gradient of ``synthesizer_loss(predicted, activation)``, the regression of
      the input synthesizer onto the real activation. Nothing from the block above reaches it.
    """

    @staticmethod
    def forward(ctx, activation, predicted, observers):  # noqa: D401
        ctx.save_for_backward(activation, predicted)
        ctx.observers = observers
        return predicted.view_as(predicted)

    @staticmethod
    def backward(ctx, grad_output):
        activation, predicted = (tensor.detach() for tensor in ctx.saved_tensors)
        for observer in ctx.observers:
            observer(predicted, activation)
        grad_activation = grad_output if ctx.needs_input_grad[0] else None
        grad_predicted = synthesizer_loss_grad(predicted, activation) if ctx.needs_input_grad[1] else None
        return grad_activation, grad_predicted, None


def synthetic_input(
    activation: Tensor,
    predicted: Tensor,
    *,
    observers: Iterable[GradientObserver] = (),
) -> Tensor:
    """Forward unlock: returns a tensor equal to ``predicted`` (an input synthesizer's prediction of
    ``activation``, same shape ``(B, *features)``) for the block above to run on. Its backward regresses
    ``predicted`` onto ``activation`` with ``synthesizer_loss`` and passes the gradient that arrives from
    the block above on to ``activation``. ``observers`` see each (predicted, activation) pair in backward.
    """
    if predicted.shape != activation.shape:
        raise ValueError(
            f"synthetic input has shape {tuple(predicted.shape)} but the activation it stands for has "
            f"{tuple(activation.shape)}: an input synthesizer must predict the activation's shape"
        )
    return _SyntheticInput.apply(activation, predicted, tuple(observers))

"""A stage: what one rank computes, as gradients (Jaderberg et al., arXiv 1608.05343, section 2, "update
unlock", across processes).

A stage knows *what* to run on its blocks and output synthesizer; when to run it, and the messages in
between, belong to the schedules (``synthgrad.pipeline.schedule``) and the rank tasks that execute them.
A stage never steps an optimizer: every method leaves gradients in ``.grad`` (accumulating, as autograd
does), and the training engine applies them. Nothing here communicates, so a test can drive the stages of a
pipeline in one process against plain autograd.

Scale convention (``synthgrad.functional``): a synthesizer predicts the per-example gradient ``B * dL/dh``;
the blocks below receive ``delivered_gradient`` of it, and the gradient sent down as the target of the
synthesizer below is ``regression_target`` of the one that arrived at the stage's input.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn

from synthgrad.functional import (
    delivered_gradient,
    gradient_cosine,
    regression_target,
    synthesizer_loss,
    synthesizer_loss_grad,
)
from synthgrad.pipeline.split import StageModules

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(output, target)``: the mean loss of a batch (as ``torch.distributed.pipelining``'s ``loss_fn``)."""


class ForwardPass(NamedTuple):
    """A forward pass kept for its backward: ``input`` (a leaf that collects the input's gradient when
    one is needed) and ``output`` (with its graph, ``(B, *features)``)."""

    input: Tensor
    output: Tensor


class UnlockedBackward(NamedTuple):
    """What an update-unlocked backward produced: ``input_target`` (the target of the synthesizer below, at
    per-example scale; ``None`` on the first stage or when not asked for) and ``loss`` (last stage only)."""

    input_target: Optional[Tensor]
    loss: Optional[Tensor]


class Stage:
    """One rank's share of a model: its blocks, the synthesizer at their output, and the loss on the last.

    Args:
        modules: the stage's blocks and output synthesizer (``split_model``).
        stage_index, num_stages: where the stage sits; the first has no input gradient to send, the
            last computes the loss.
        loss_fn: the last stage's loss, ``loss_fn(output, target)`` (e.g. ``nn.functional.cross_entropy``).
    """

    def __init__(self, modules: StageModules, *, stage_index: int, num_stages: int,
                 loss_fn: LossFn = nn.functional.cross_entropy) -> None:
        self.modules, self.chain, self.synthesizer = modules, modules.chain, modules.synthesizer
        self.stage_index, self.num_stages, self.loss_fn = stage_index, num_stages, loss_fn
        self._saved: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    @property
    def is_first(self) -> bool:
        return self.stage_index == 0

    @property
    def is_last(self) -> bool:
        return self.stage_index == self.num_stages - 1

    # update-unlocked training ------------------------------------------------------------------

    def forward(self, activation: Tensor, *, needs_input_grad: bool) -> ForwardPass:
        """Run the blocks on ``activation`` ``(B, *in_features)``, keeping the graph; with
        ``needs_input_grad`` (not on the first stage) the backward also computes the input's gradient."""
        activation = activation.detach().requires_grad_() if needs_input_grad and not self.is_first else activation
        return ForwardPass(activation, self.chain(activation))

    def backward_unlocked(self, forward: ForwardPass, *, context: Optional[Tensor] = None,
                          target: Optional[Tensor] = None) -> UnlockedBackward:
        """Backpropagate into the blocks (``.grad``) what the stage learns from at once: the synthetic
        gradient at its output (``context``: e.g. one-hot labels ``(B, classes)`` for cDNI), or, on the last
        stage, ``loss_fn(output, target)``. Below the top cut the input's gradient is this stage's synthetic
        gradient backpropagated through its blocks: the bootstrapped target of the cut below."""
        loss = None
        if self.is_last:
            loss = self.loss_fn(forward.output, target)
            loss.backward()
        elif self.synthesizer is None:
            raise ValueError(f"stage {self.stage_index} has no synthesizer at its output: it cannot update unlocked")
        else:
            with torch.no_grad():
                synthetic_grad = self.synthesizer(forward.output.detach(), context)  # (B, *features)
            forward.output.backward(delivered_gradient(synthetic_grad))
        has_input_target = forward.input.requires_grad and forward.input.grad is not None
        input_target = regression_target(forward.input.grad) if has_input_target else None
        return UnlockedBackward(input_target, None if loss is None else loss.detach())

    def synthesizer_backward(self, output: Tensor, context: Optional[Tensor], target_grad: Tensor, *,
                             measure: bool = True) -> Optional[Tensor]:
        """The output synthesizer's gradient (``.grad``) towards ``target_grad`` (per-example scale, shaped
        like ``output``), from the stage's detached ``output`` for the same examples. With ``measure``,
        returns ``(loss, cosine)`` of the prediction, detached, shape ``(2,)``; else ``None`` (measuring is
        not free, so a run measures every ``stats_every`` steps)."""
        synthetic_grad = self.synthesizer(output, context)
        if synthetic_grad.requires_grad:  # a fixed synthesizer (a test's exact one) has no parameters
            # the loss's gradient in closed form, as a cut's backward computes it: no graph for the loss
            synthetic_grad.backward(synthesizer_loss_grad(synthetic_grad.detach(), target_grad))
        if not measure:
            return None
        prediction = synthetic_grad.detach()
        return torch.stack([synthesizer_loss(prediction, target_grad), gradient_cosine(prediction, target_grad)])

    # lockstep (exact pipelined backprop) ---------------------------------------------------------

    def forward_lockstep(self, key: tuple[int, int], activation: Tensor, target: Optional[Tensor],
                         micro_batches: int) -> tuple[Tensor, Optional[Tensor]]:
        """Run the blocks on one micro-batch and keep the graph under ``key`` (step, micro-batch) for
        ``backward_lockstep``. Returns the detached output and, on the last stage, the micro-batch's loss
        (the mini-batch's mean loss is the mean of its micro-batches', so each backpropagates a share
        ``1 / micro_batches``)."""
        forward = self.forward(activation, needs_input_grad=True)
        if self.is_last:
            loss = self.loss_fn(forward.output, target)
            self._saved[key] = (forward.input, loss / micro_batches)
            return forward.output.detach(), loss.detach()
        self._saved[key] = forward
        return forward.output.detach(), None

    def backward_lockstep(self, key: tuple[int, int], output_grad: Optional[Tensor]) -> Optional[Tensor]:
        """Backpropagate ``output_grad`` (dL/d output; ``None`` on the last stage) through the graph kept
        under ``key`` into ``.grad``; returns dL/d input (``None`` on the first stage)."""
        activation, output = self._saved.pop(key)
        output.backward(output_grad)
        return None if self.is_first else activation.grad

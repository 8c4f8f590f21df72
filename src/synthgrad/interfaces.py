"""BackwardInterface: a decoupling cut that can be placed on any activation inside ``forward``;
ForwardInterface: a synthetic input that lets the block above run before the activation exists.

Paper section 2 ("update unlock"): the module below a cut updates from the synthetic gradient
M(h, c) as soon as h exists, and the synthesizer M learns from the gradient that arrives later. In one
process both happen inside one ordinary ``loss.backward()``: the cut's backward (see
``synthgrad.functional.synthetic_gradient``) hands the synthetic gradient down and turns the arriving
gradient into the synthesizer's target. No global state, no backward call inside ``forward``.

Paper section 3.3 ("complete unlock"): a ForwardInterface also replaces the activation by I(x), a
prediction from the network input x, so the block above need not wait for the blocks below either.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, Optional

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from synthgrad.functional import GradientObserver, synthetic_gradient, synthetic_input
from synthgrad.synthesizers import InputSynthesizer, Synthesizer


class _ObservedInterface(nn.Module):
    """What both interfaces share: observers that see (prediction, target) pairs during backward."""

    def __init__(self) -> None:
        super().__init__()
        self._gradient_hooks: OrderedDict[int, GradientObserver] = OrderedDict()

    def register_gradient_hook(self, hook: GradientObserver) -> RemovableHandle:
        """Call ``hook(prediction, target)`` (detached) at every backward through this interface, like
        ``nn.Module.register_full_backward_hook``; remove it with the handle. A forward pass fixes the
        hooks its backward calls: register before the forward."""
        handle = RemovableHandle(self._gradient_hooks)
        self._gradient_hooks[handle.id] = hook
        return handle

    @property
    def _observers(self) -> tuple[GradientObserver, ...]:
        return tuple(self._gradient_hooks.values())


class BackwardInterface(_ObservedInterface):
    """A cut with a synthesizer. ``forward(activation, context=None)`` returns the activation unchanged.

    In training mode (with grad enabled) the returned tensor's backward delivers the synthetic gradient
    to everything below and trains the synthesizer on the arriving gradient; in eval mode, or under
    ``torch.no_grad()``, it is an exact identity and the synthesizer is not run. Its gradient hooks
    see ``(synthetic_grad, target_grad)`` at per-example scale.

    Args:
        synthesizer: predicts the per-example gradient w.r.t. the activation.
        pass_target_grad: pass the arriving gradient down instead of the synthetic one (plain
            backprop) while the synthesizer keeps learning; for measuring how good synthesizers are.
    """

    def __init__(self, synthesizer: Synthesizer, *, pass_target_grad: bool = False) -> None:
        super().__init__()
        self.synthesizer = synthesizer
        self.pass_target_grad = pass_target_grad

    def forward(self, activation: Tensor, context: Optional[Tensor] = None) -> Tensor:
        if not (self.training and activation.requires_grad):
            return activation
        synthetic_grad = self.synthesizer(activation.detach(), context)  # (B, *features)
        return synthetic_gradient(activation, synthetic_grad, pass_target_grad=self.pass_target_grad,
                                  observers=self._observers)

    def extra_repr(self) -> str:
        return f"pass_target_grad={self.pass_target_grad}"


class ForwardInterface(_ObservedInterface):
    """A forward unlock. ``forward(activation, network_input)`` returns, in training mode with grad
    enabled, the synthesizer's prediction I(network_input) shaped like ``activation``, whose backward
    regresses it onto the real activation and passes the arriving gradient on to the activation (see
    ``synthgrad.functional.synthetic_input``); in eval mode or under ``torch.no_grad()`` it returns the
    real activation. Its gradient hooks see ``(predicted_input, activation)``.
    """

    def __init__(self, synthesizer: InputSynthesizer) -> None:
        super().__init__()
        self.synthesizer = synthesizer

    def forward(self, activation: Tensor, network_input: Tensor) -> Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return activation
        return synthetic_input(activation, self.synthesizer(network_input), observers=self._observers)


def named_backward_interfaces(model: nn.Module) -> list[tuple[str, BackwardInterface]]:
    """Every cut in ``model`` with its name, in registration order, for metric keys such as
    ``sg/cos/<name>``. A model names its own cuts by defining ``named_cuts()`` (``DecoupledSequential``
    names each by the index of the block it cuts); otherwise a cut is named by its module path."""
    named_cuts = getattr(model, "named_cuts", None)
    if callable(named_cuts):
        return list(named_cuts())
    return [(name, module) for name, module in model.named_modules() if isinstance(module, BackwardInterface)]


def backward_interfaces(model: nn.Module) -> list[BackwardInterface]:
    """Every BackwardInterface in ``model``, in registration order (bottom cut first for
    ``DecoupledSequential``)."""
    return [module for module in model.modules() if isinstance(module, BackwardInterface)]


def named_forward_interfaces(model: nn.Module) -> list[tuple[str, ForwardInterface]]:
    """Every forward unlock in ``model`` with its name. A model names its own by defining
    ``named_forward_unlocks()`` (``DecoupledSequential`` names each by the index of the block whose
    output it predicts, as it names cuts); otherwise one is named by its module path."""
    named_forward_unlocks = getattr(model, "named_forward_unlocks", None)
    if callable(named_forward_unlocks):
        return list(named_forward_unlocks())
    return [(name, module) for name, module in model.named_modules() if isinstance(module, ForwardInterface)]


def synthesizer_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters of all synthesizers in ``model`` (gradient and input synthesizers), e.g. for
    their own optimizer param group."""
    for module in model.modules():
        if isinstance(module, (BackwardInterface, ForwardInterface)):
            yield from module.synthesizer.parameters()


def block_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters of ``model`` that are not part of a synthesizer."""
    synthesizer_ids = {id(p) for p in synthesizer_parameters(model)}
    return (p for p in model.parameters() if id(p) not in synthesizer_ids)

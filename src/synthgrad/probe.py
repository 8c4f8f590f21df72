"""Look at synthetic gradients next to the true ones, without disturbing the model being trained."""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from synthgrad.interfaces import backward_interfaces


def gradient_snapshot(
    model: nn.Module, inputs: Tensor, labels: Tensor, *, context: Optional[Tensor] = None
) -> list[tuple[Tensor, Tensor]]:
    """For one batch, the synthetic gradient and the *true* gradient ``B * dL/dh`` at every cut of
    ``model`` (bottom cut first), both ``(B, *features)`` on the CPU.

    Runs on a deep copy in training mode with every cut passing true gradients down, so the targets
    are true gradients (not bootstrapped ones) and the model's weights, BatchNorm statistics and
    gradients stay untouched. The loss is the batch-mean cross-entropy.
    """
    probe = copy.deepcopy(model).train()
    interfaces = backward_interfaces(probe)
    pairs: list[Optional[tuple[Tensor, Tensor]]] = [None] * len(interfaces)

    def recorder(cut: int):
        def record(synthetic_grad: Tensor, target_grad: Tensor) -> None:
            pairs[cut] = (synthetic_grad.cpu(), target_grad.cpu())
        return record

    for cut, interface in enumerate(interfaces):
        interface.pass_target_grad = True
        interface.register_gradient_hook(recorder(cut))
    logits = probe(inputs, context) if context is not None else probe(inputs)
    nn.functional.cross_entropy(logits, labels).backward()
    missing = [cut for cut, pair in enumerate(pairs) if pair is None]
    if missing:
        raise RuntimeError(f"no gradient reached cuts {missing}: are their activations used by the loss?")
    return pairs  # type: ignore[return-value]

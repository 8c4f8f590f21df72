"""Look at synthetic gradients next to the true ones, without disturbing the model being trained."""
from __future__ import annotations

import copy
from typing import Optional

from torch import Tensor, nn

from synthgrad.interfaces import named_backward_interfaces


def gradient_snapshot(
    model: nn.Module, inputs: Tensor, labels: Tensor, *, context: Optional[Tensor] = None
) -> dict[str, tuple[Tensor, Tensor]]:
    """For one batch, the synthetic gradient and the *true* gradient ``B * dL/dh`` at every cut of
    ``model``, keyed by cut name (see ``named_backward_interfaces``; bottom cut first), both
    ``(B, *features)`` on the CPU.

    Runs on a deep copy in training mode with every cut passing true gradients down, so the targets
    are true gradients (not bootstrapped ones) and the model's weights, BatchNorm statistics and
    gradients stay untouched. The loss is the batch-mean cross-entropy.
    """
    probe = copy.deepcopy(model).train()
    cuts = named_backward_interfaces(probe)
    pairs: dict[str, tuple[Tensor, Tensor]] = {}

    def recorder(name: str):
        def record(synthetic_grad: Tensor, target_grad: Tensor) -> None:
            pairs[name] = (synthetic_grad.cpu(), target_grad.cpu())
        return record

    for name, interface in cuts:
        interface.pass_target_grad = True
        interface.register_gradient_hook(recorder(name))
    logits = probe(inputs, context) if context is not None else probe(inputs)
    nn.functional.cross_entropy(logits, labels).backward()
    missing = [name for name, _ in cuts if name not in pairs]
    if missing:
        raise RuntimeError(f"no gradient reached cuts {missing}: are their activations used by the loss?")
    return {name: pairs[name] for name, _ in cuts}

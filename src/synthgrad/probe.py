"""Look at synthetic gradients next to the true ones, without disturbing the model being trained:
``gradient_snapshot`` (and its cosines, ``true_gradient_cosines``) at the cuts of a feed-forward model,
``boundary_gradient_snapshot`` at the chunk boundaries of a recurrent one."""
from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from synthgrad.functional import gradient_cosine
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


def true_gradient_cosines(model: nn.Module, inputs: Tensor, labels: Tensor, *,
                          context: Optional[Tensor] = None) -> dict[str, float]:
    """``sg/cos_true/<k>`` at every cut of ``model``: the cosine between the synthetic and the true gradient
    on one batch (``gradient_snapshot``; the model is left alone). ``sg/cos/<k>`` compares with the target
    a synthesizer learns from, which below the top cut is bootstrapped from the synthesizer above: this
    one says how much of the real gradient reaches each block. Empty for a model without cuts."""
    if not named_backward_interfaces(model):
        return {}
    return {f"sg/cos_true/{name}": gradient_cosine(synthetic, true).item()
            for name, (synthetic, true) in gradient_snapshot(model, inputs, labels, context=context).items()}


def boundary_gradient_snapshot(
    core: nn.Module,
    inputs: Tensor,
    chunk_loss: Callable[[Tensor, int, int], Tensor],
    truncation: int,
    synthesizer: nn.Module,
    *,
    boundary_context: Optional[Callable[[int], Tensor]] = None,
) -> list[tuple[int, Tensor, Tensor]]:
    """For one batch of whole sequences ``(B, L, input_dim)``: at every chunk boundary, ``(step, synthetic,
    true)``, the step the boundary comes before, the synthesizer's prediction from the state there and the
    *true* future gradient ``B * dL/ds`` of the loss of every later step (backpropagated through the rest
    of the sequence), both ``(B, state_dim)``; arguments as in ``synthgrad.recurrent.backward_through_chunks``.

    Why: a recurrent synthesizer is trained on a bootstrapped target, which holds the next synthesizer's
    guess instead of the gradient from further on; its cosine with that target can look fine while the
    chunk receives a gradient unrelated to the future it should learn from. Uses ``torch.autograd.grad``,
    so no parameter's ``.grad`` changes."""
    batch, length = inputs.shape[0], inputs.shape[1]
    state = core.initial_state(batch, dtype=inputs.dtype, device=inputs.device)
    loss, boundaries = inputs.new_zeros(()), []
    for start in range(0, length, truncation):
        stop = min(start + truncation, length)
        outputs, state = core(inputs[:, start:stop], state)
        loss = loss + chunk_loss(outputs, start, stop)
        if stop < length:
            boundaries.append((stop, state))
    if not boundaries:
        return []
    true_grads = torch.autograd.grad(loss, [boundary for _, boundary in boundaries])
    with torch.no_grad():
        return [(step, synthesizer(boundary) if boundary_context is None
                 else synthesizer(boundary, boundary_context(step)), true_grad * batch)
                for (step, boundary), true_grad in zip(boundaries, true_grads)]

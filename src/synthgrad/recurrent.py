"""Synthetic gradients for recurrent networks: truncated BPTT with a DNI at every chunk boundary.

Jaderberg et al., *Decoupled Neural Interfaces using Synthetic Gradients* (arXiv 1608.05343), section
3.1 and figure 3. A sequence of length L is unrolled in chunks of ``truncation`` (T) steps. Plain
truncated BPTT cuts the gradient at each chunk boundary. With DNI, a synthesizer reads the recurrent
state ``s_k`` (h and c of every layer) at the end of chunk k and predicts the gradient that the future
would send back into it; that synthetic gradient is added at the chunk's last step, so chunk k learns
from dependencies that reach beyond it.

Bootstrapped target (paper figure 3): the synthesizer's target at the boundary entering chunk k+1 is
the gradient of chunk k+1's losses w.r.t. that boundary state *plus* the synthetic gradient at chunk
k+1's end backpropagated through chunk k+1; zero at the end of a sequence. Both come out of one
ordinary autograd backward: the state entering a chunk is a detached leaf with ``requires_grad``, and
``backward(chunk_loss + <synthetic_grad_out, s_out>)`` leaves the target in the leaf's ``.grad``.

DNI+Aux (paper section 3.1, "Aux"): an auxiliary head reads the state at a boundary, *with* gradient
into the core, and predicts the synthetic gradient at the next boundary, T steps later (2T steps after
the start of the chunk that produced the state). Its squared error is an extra loss on the core: the
RNN must carry information about its own future gradients. Implemented by keeping chunk k's graph
until chunk k+1 has computed its synthetic gradient.

Scale convention (as everywhere in synthgrad, see ``synthgrad.functional``): losses are means over the
batch of sums over time steps, so a true gradient w.r.t. the state is O(1/B); synthesizers predict the
*per-example* gradient ``B * dL/ds`` (``regression_target``) and the chunk receives ``synthetic_grad / B``
(``delivered_gradient``).

Target decay: ``target = dL_next/ds + lambda * J_next^T synthetic_grad_next``. With lambda below 1 the
synthesizer learns a geometrically discounted future (horizon about ``T / (1 - lambda)`` steps), which keeps
the bootstrap from feeding on itself on an endless stream; 0 makes the target the next chunk's loss
gradient alone. The chunk itself always receives the full synthetic gradient.

Parameters are not updated here: ``backward_through_chunks`` only accumulates ``.grad`` over the chunks
of one window (a whole sequence, or a slice of a text stream); the caller steps its optimizers after.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from synthgrad.errors import InvalidConfig
from synthgrad.functional import delivered_gradient, gradient_cosine, regression_target, synthesizer_loss

ChunkLoss = Callable[[Tensor, int, int], Tensor]
"""``chunk_loss(outputs, start, stop)``: the loss of steps ``start:stop`` given the core's outputs for
them ``(B, stop - start, output_dim)``; a scalar, summed over steps and averaged over the batch."""


class LSTMCore(nn.Module):
    """A stacked LSTM with a linear readout; its recurrent state is one flat tensor per example.

    The state ``(B, state_dim)`` concatenates h of every layer then c of every layer, ``state_dim =
    2 * num_layers * hidden_dim``: the activation a synthesizer reads and predicts the gradient of.
    ``forward(inputs (B, T, input_dim), state (B, state_dim)) -> (outputs (B, T, output_dim), state)``.

    ``dropout`` (training mode only) drops units of every layer's output on its way up: into the next
    layer and into the readout. The recurrent state is never dropped, so what a synthesizer reads and
    predicts the gradient of is the same with and without it; it lets a language model train longer on
    a small text before it overfits.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, *, num_layers: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if min(input_dim, hidden_dim, output_dim, num_layers) <= 0:
            raise ValueError(f"LSTMCore sizes must be positive, got input_dim={input_dim}, hidden_dim="
                             f"{hidden_dim}, output_dim={output_dim}, num_layers={num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise InvalidConfig(f"{{0}} must be in [0, 1), got {dropout}", "dropout")
        self.hidden_dim, self.num_layers = hidden_dim, num_layers
        self.lstm = nn.LSTM(input_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.readout = nn.Linear(hidden_dim, output_dim)

    @property
    def state_dim(self) -> int:
        return 2 * self.num_layers * self.hidden_dim

    def initial_state(self, batch_size: int, **tensor_options) -> Tensor:
        """The zero state ``(B, state_dim)`` a sequence starts from."""
        return torch.zeros(batch_size, self.state_dim, **tensor_options)

    def forward(self, inputs: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        batch = inputs.shape[0]
        h, c = state.view(batch, 2, self.num_layers, self.hidden_dim).unbind(1)  # each (B, layers, H)
        top, (h, c) = self.lstm(inputs, (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous()))
        state = torch.cat([h.transpose(0, 1).reshape(batch, -1), c.transpose(0, 1).reshape(batch, -1)], dim=1)
        return self.readout(self.dropout(top)), state  # (B, T, output_dim), (B, state_dim)


class SquashedCellInput(nn.Module):
    """Wraps a synthesizer of the LSTM state so that it reads ``(h, tanh(c))`` instead of ``(h, c)``;
    it still predicts the gradient w.r.t. the raw ``(h, c)``. ``forward(state (B, S)[, context]) -> (B, S)``.

    Why: on an endless text stream the cell state is never reset and drifts (to norms of 30-600 on Tiny
    Shakespeare), and a synthesizer regressing on the raw state diverges or overshoots until the LSTM stalls.
    ``h`` is bounded already; ``tanh`` bounds ``c`` and leaves small cells nearly unchanged. Measurements:
    ``benchmarks/results/rnn/charlm_protocol.md``."""

    def __init__(self, synthesizer: nn.Module) -> None:
        super().__init__()
        self.synthesizer = synthesizer

    def forward(self, state: Tensor, context: Optional[Tensor] = None) -> Tensor:
        h, c = state.chunk(2, dim=1)  # (B, S/2) each: LSTMCore puts h of every layer, then c of every layer
        squashed = torch.cat([h, torch.tanh(c)], dim=1)
        return self.synthesizer(squashed) if context is None else self.synthesizer(squashed, context)


@dataclass
class WindowResult:
    """What ``backward_through_chunks`` measured on one window (all values detached)."""

    loss: float
    """The window's task loss: sum over its steps, mean over the batch."""
    state: Tensor
    """The state after the window's last step ``(B, state_dim)``, detached: where the next window starts."""
    outputs: Tensor
    """The core's outputs over the window ``(B, L, output_dim)``, detached."""
    synthesizer_losses: list[float] = field(default_factory=list)
    cosines: list[float] = field(default_factory=list)
    """Per trained boundary: cosine between its synthetic gradient and its bootstrapped target."""
    aux_losses: list[float] = field(default_factory=list)


def backward_through_chunks(
    core: nn.Module,
    inputs: Tensor,
    chunk_loss: ChunkLoss,
    truncation: int,
    *,
    state: Optional[Tensor] = None,
    synthesizer: Optional[nn.Module] = None,
    boundary_context: Optional[Callable[[int], Tensor]] = None,
    aux_head: Optional[nn.Module] = None,
    aux_weight: float = 1.0,
    sequence_ends: bool = True,
    train_entering_state: bool = False,
    target_decay: float = 1.0,
) -> WindowResult:
    """Truncated BPTT over ``inputs (B, L, input_dim)`` in chunks of ``truncation`` steps, accumulating
    gradients into ``core`` (and ``synthesizer`` / ``aux_head``) parameters' ``.grad``.

    Args:
        core: maps ``(inputs (B, t, D), state (B, S))`` to ``(outputs (B, t, O), state (B, S))``.
        chunk_loss: the loss of a chunk's steps (see ``ChunkLoss``).
        state: the state entering the window, ``(B, S)`` (detached); zeros when ``None``.
        synthesizer: ``None`` is plain truncated BPTT. Otherwise ``synthesizer(state)`` predicts the
            per-example gradient ``B * dL/ds`` at each chunk end and is trained on the bootstrapped target.
        boundary_context: cDNI. ``boundary_context(step)`` is the synthesizer's context ``(B, C)`` at the
            boundary before window step ``step`` (0: the state entering the window), read as
            ``synthesizer(state, context)``; e.g. the inputs and targets of the chunk after it
            (``synthgrad.experiments.recurrent_task.next_chunk_context``).
        aux_head: DNI+Aux: predicts, from the state at a boundary, the synthetic gradient at the next one.
        sequence_ends: the window ends its sequence, so no gradient comes from beyond it (target zero and
            no synthetic gradient at the last step). ``False`` for a slice of a longer stream: the last
            chunk then receives a synthetic gradient, trained when the next window sends its target.
        train_entering_state: ``state`` is such a boundary of the previous window: train the synthesizer
            on it with the target this window's first chunk produces.
        target_decay: lambda in ``[0, 1]``, the weight of the next boundary's synthetic gradient in the
            bootstrapped target (see the module docstring); 1 is the paper.

    Returns a ``WindowResult``.
    """
    _check_options(truncation, target_decay)
    batch, length = inputs.shape[0], inputs.shape[1]
    if state is None:
        state = core.initial_state(batch, dtype=inputs.dtype, device=inputs.device)
    result = WindowResult(loss=0.0, state=state, outputs=inputs.new_empty(0))
    outputs: list[Tensor] = []
    # the boundary whose target the next chunk produces: its synthesizer prediction (with graph into the
    # synthesizer), and the auxiliary prediction made from it (with graph into the previous chunk)
    pending_prediction = (_synthesize(synthesizer, boundary_context, state, 0)
                          if synthesizer is not None and train_entering_state else None)
    pending_aux: Optional[Tensor] = None
    for start in range(0, length, truncation):
        stop = min(start + truncation, length)
        is_last = stop == length
        entering = state.detach().requires_grad_()  # a leaf: its .grad becomes the bootstrapped target
        chunk_outputs, state = core(inputs[:, start:stop], entering)
        loss = chunk_loss(chunk_outputs, start, stop)
        total = loss
        synthetic_grad, injected = None, None
        if synthesizer is not None and not (is_last and sequence_ends):
            synthetic_grad = _synthesize(synthesizer, boundary_context, state.detach(), stop)  # (B, S)
            # the synthetic gradient enters at the chunk's last step: d injected / d state = synthetic_grad / B
            injected = (delivered_gradient(synthetic_grad.detach()) * state).sum()
            if pending_aux is not None:
                aux_loss = synthesizer_loss(pending_aux, synthetic_grad.detach())
                total = total + aux_weight * aux_loss
                result.aux_losses.append(aux_loss.item())
        keep_graph = aux_head is not None and synthetic_grad is not None and not is_last
        aux_prediction = aux_head(state) if keep_graph else None  # (B, S), graph into this chunk
        _backward_chunk(total, injected, entering, target_decay if pending_prediction is not None else 1.0,
                        keep_graph)
        if pending_prediction is not None:
            target_grad = regression_target(entering.grad)  # per-example scale, (B, S)
            _train_synthesizer(pending_prediction, target_grad, result)
        pending_prediction, pending_aux = synthetic_grad, aux_prediction
        result.loss += loss.item()
        outputs.append(chunk_outputs.detach())
    # with sequence_ends=False the last prediction is trained by the next window (train_entering_state)
    result.state = state.detach()
    result.outputs = torch.cat(outputs, dim=1)
    return result


def _check_options(truncation: int, target_decay: float) -> None:
    if truncation <= 0:
        raise InvalidConfig(f"{{0}} must be positive, got {truncation}", "truncation")
    if not 0.0 <= target_decay <= 1.0:
        raise InvalidConfig(f"{{0}} must be in [0, 1], got {target_decay}", "target_decay")


def _synthesize(synthesizer: nn.Module, boundary_context: Optional[Callable[[int], Tensor]], boundary_state: Tensor,
                step: int) -> Tensor:
    """The synthetic gradient ``(B, S)`` (per-example scale) at the boundary before window step ``step``."""
    if boundary_context is None:
        return synthesizer(boundary_state)
    return synthesizer(boundary_state, boundary_context(step))


def _backward_chunk(total: Tensor, injected: Optional[Tensor], entering: Tensor, target_decay: float,
                    keep_graph: bool) -> None:
    """Backpropagate a chunk's loss ``total`` and its ``injected`` synthetic gradient (``None``: none), leaving
    the bootstrapped target in ``entering.grad``, with the synthetic gradient's part of it weighted by
    ``target_decay``. Below 1 that takes two passes: the first leaves the damped target, the second adds the
    rest of the synthetic gradient to the parameters (``entering.grad`` is read before it is touched again)."""
    if injected is None:
        total.backward(retain_graph=keep_graph)
    elif target_decay == 1.0:
        (total + injected).backward(retain_graph=keep_graph)
    else:
        (total + target_decay * injected).backward(retain_graph=True)
        damped_target = entering.grad.clone()
        ((1.0 - target_decay) * injected).backward(retain_graph=keep_graph)
        entering.grad = damped_target


def _train_synthesizer(prediction: Tensor, target_grad: Tensor, result: WindowResult) -> None:
    loss = synthesizer_loss(prediction, target_grad)
    if prediction.requires_grad:
        loss.backward()
    result.synthesizer_losses.append(loss.item())
    result.cosines.append(gradient_cosine(prediction.detach(), target_grad).item())

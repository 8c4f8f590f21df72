"""What the recurrent tasks share: the LSTM with the synthesizer and auxiliary head a method calls for,
cDNI's context for a recurrent net, and one window of truncated BPTT with the step metrics it gives.

Methods (DNI paper, arXiv 1608.05343, section 3.1): plain truncated BPTT (``bptt``), a synthesizer at
every chunk boundary (``dni``), one that also reads the next chunk's inputs and targets (``cdni``, see
``next_chunk_context``), or DNI plus the auxiliary task (``dni-aux``). The machinery is
``synthgrad.recurrent``; the tasks are ``SequenceTask`` (Copy, Repeat Copy) and ``CharLMTask``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from synthgrad.engine import ParameterGroups, Task
from synthgrad.experiments.rnn_config import RNNConfig
from synthgrad.recurrent import ChunkLoss, LSTMCore, SquashedCellInput, WindowResult, backward_through_chunks
from synthgrad.synthesizers import LinearSynthesizer, MLPSynthesizer

LN2 = math.log(2.0)


class RecurrentModel(nn.Module):
    """The LSTM ``core`` with its boundary ``synthesizer`` and DNI+Aux ``aux_head`` (each ``None`` where the
    method has none): the one module the engine checkpoints, so ``final.pt``'s ``model`` holds all three
    (keys ``core.*``, ``synthesizer.*``, ``aux_head.*``)."""

    def __init__(self, core: LSTMCore, synthesizer: Optional[nn.Module], aux_head: Optional[nn.Module]) -> None:
        super().__init__()
        self.core, self.synthesizer, self.aux_head = core, synthesizer, aux_head


def build_recurrent_model(config: RNNConfig, input_dim: int, output_dim: int) -> RecurrentModel:
    """The core of ``config`` and, for its method, a zero-initialised synthesizer of the state (``dni``),
    of the state and the next chunk (``cdni``: a context of ``T * (input_dim + output_dim)``), plus a linear
    auxiliary head (``dni-aux``). Seeded by ``config.seed``."""
    torch.manual_seed(config.seed)
    core = LSTMCore(input_dim, config.hidden_dim, output_dim, num_layers=config.num_layers, dropout=config.dropout)
    synthesizer, aux_head = None, None
    if config.method != "bptt":
        state_dim = core.state_dim
        context_dim = config.truncation * (input_dim + output_dim) if config.method == "cdni" else 0
        synthesizer = (LinearSynthesizer(state_dim, context_dim=context_dim) if config.synth_layers == 0 else
                       MLPSynthesizer(state_dim, hidden_dim=config.synth_width,
                                      num_hidden_layers=config.synth_layers, context_dim=context_dim))
        if config.squash_cell:
            synthesizer = SquashedCellInput(synthesizer)
        aux_head = nn.Linear(state_dim, state_dim) if config.method == "dni-aux" else None
    return RecurrentModel(core, synthesizer, aux_head).to(config.device)


def next_chunk_context(inputs: Tensor, targets: Tensor, truncation: int) -> Callable[[int], Tensor]:
    """cDNI's context for a recurrent net: ``context(step)`` is ``(B, T * (I + O))``, the inputs ``(B, L, I)``
    and targets ``(B, L, O)`` of the T steps from ``step`` on, flattened, zero past ``L``.

    Why: the gradient that the next chunk sends into a boundary state is mostly the error of its outputs
    against its targets, which the state alone cannot know; like the label in a feed-forward cDNI, the data
    after the boundary is known at training time, and the chunk before still does not wait for the
    computation after it."""
    steps = torch.cat([inputs, targets], dim=2)
    padded = nn.functional.pad(steps, (0, 0, 0, truncation))  # zeros after the last step

    def context(step: int) -> Tensor:
        return padded[:, step:step + truncation].flatten(1)

    return context


def window_metrics(result: WindowResult) -> dict[str, float]:
    """The synthesizer's and auxiliary head's step metrics: ``sg/loss/state`` and ``sg/cos/state`` (against
    the bootstrapped target) and ``aux/loss``, each the mean over the window's boundaries; a key is left out
    when the window had no such boundary."""
    metrics = {}
    for key, values in (("sg/loss/state", result.synthesizer_losses), ("sg/cos/state", result.cosines),
                        ("aux/loss", result.aux_losses)):
        if values:
            metrics[key] = sum(values) / len(values)
    return metrics


class RecurrentTask(Task):
    """The part of every recurrent task that trains: the model of ``config`` and one window of truncated BPTT
    per step. The core and auxiliary head learn at ``TrainConfig.lr``, the synthesizer at ``synth_lr``."""

    def __init__(self, config: RNNConfig, input_dim: int, output_dim: int) -> None:
        self.config = config
        self.model = build_recurrent_model(config, input_dim, output_dim)
        self.device = torch.device(config.device)

    def parameter_groups(self) -> ParameterGroups:
        model = self.model
        blocks = list(model.core.parameters()) + (list(model.aux_head.parameters()) if model.aux_head else [])
        return ParameterGroups(blocks=blocks,
                               synthesizers=list(model.synthesizer.parameters()) if model.synthesizer else [])

    def backward_window(self, inputs: Tensor, chunk_loss: ChunkLoss, **window_options: Any) -> WindowResult:
        """Gradients of one window ``inputs (B, L, input_dim)`` into ``.grad`` (``backward_through_chunks``
        with this task's model and settings), the core's clipped to ``clip_norm`` when set."""
        config, model = self.config, self.model
        result = backward_through_chunks(model.core, inputs, chunk_loss, config.truncation,
                                         synthesizer=model.synthesizer, aux_head=model.aux_head,
                                         aux_weight=config.aux_weight, target_decay=config.target_decay,
                                         **window_options)
        if config.clip_norm:
            nn.utils.clip_grad_norm_(model.core.parameters(), config.clip_norm)
        return result

    def run_info(self) -> dict[str, Any]:
        """What names the run in its summary."""
        return {"method": self.config.method, "truncation": self.config.truncation}

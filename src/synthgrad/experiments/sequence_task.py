"""Copy and Repeat Copy with the length curriculum (DNI paper, arXiv 1608.05343, section 3.1), as a task of
the engine: every step one batch of whole sequences at the curriculum's length, truncated BPTT over its
chunks, and the curriculum's update; the run ends when ``max_length`` is solved or the steps run out.

Records: ``train/bpc`` (the error the curriculum reads), ``length`` (of the interval's last batch),
``max_length_solved``, and with a synthesizer ``sg/loss/state``, ``sg/cos/state`` (against its
bootstrapped target), ``sg/cos_true/state`` (against the true future gradient), ``aux/loss`` for DNI+Aux.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from synthgrad.data.sequence_tasks import SequenceBatch, sequence_batch, task_dims
from synthgrad.engine import StepResult
from synthgrad.experiments.curriculum import Curriculum
from synthgrad.experiments.recurrent_task import LN2, RecurrentTask, next_chunk_context, window_metrics
from synthgrad.experiments.rnn_config import RNNConfig
from synthgrad.functional import gradient_cosine
from synthgrad.probe import boundary_gradient_snapshot


def scored_loss(outputs: Tensor, batch: SequenceBatch, start: int, stop: int) -> Tensor:
    """The loss of steps ``start:stop`` of a Copy / Repeat Copy ``batch`` given the core's ``outputs (B,
    stop - start, output_dim)`` (logits): binary cross-entropy of every channel of the scored steps only
    (``batch.mask``), summed over steps and channels and averaged over the batch. Divided by the number
    of scored steps and by ln 2 it is the error in bits per character that the curriculum reads."""
    mask = batch.mask[start:stop]  # (t,)
    if not mask.any():
        return outputs.sum() * 0.0  # keeps the graph: a chunk without scored steps still carries gradients
    return nn.functional.binary_cross_entropy_with_logits(
        outputs[:, mask], batch.targets[:, start:stop][:, mask], reduction="sum") / outputs.shape[0]


class SequenceTask(RecurrentTask):
    """Copy or Repeat Copy (``config.task``) for the engine. Its state (checkpointed) is the batch
    generator, seeded by ``config.seed`` and drawn on the CPU so that every device sees the same data, and
    the curriculum."""

    progress_keys = ("length", "train/bpc")

    def __init__(self, config: RNNConfig) -> None:
        super().__init__(config, *task_dims(config.task))
        self.curriculum = Curriculum(threshold=config.threshold, window=config.curriculum_window)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.last_length = self.curriculum.length
        self.last_batch: Optional[tuple[SequenceBatch, Optional[Callable[[int], Tensor]]]] = None

    def chunk_loss(self, batch: SequenceBatch) -> Callable[[Tensor, int, int], Tensor]:
        return lambda outputs, start, stop: scored_loss(outputs, batch, start, stop)

    def train_step(self, step: int) -> StepResult:
        config = self.config
        batch = sequence_batch(config.task, config.batch_size, self.curriculum.length, self.generator,
                               max_repeats=config.max_repeats)
        batch = SequenceBatch(*(tensor.to(self.device) for tensor in (batch.inputs, batch.targets, batch.mask)))
        context = (next_chunk_context(batch.inputs, batch.targets * batch.mask[:, None], config.truncation)
                   if config.method == "cdni" else None)
        result = self.backward_window(batch.inputs, self.chunk_loss(batch), boundary_context=context)
        error = result.loss / int(batch.mask.sum()) / LN2  # bits per character
        self.last_length, self.last_batch = self.curriculum.length, (batch, context)
        self.curriculum.update(error)
        return StepResult(torch.tensor(result.loss), {"train/bpc": error, **window_metrics(result)})

    def end_interval(self) -> dict[str, float]:
        return {"length": self.last_length, "max_length_solved": self.curriculum.max_length_solved}

    def evaluate(self) -> dict[str, float]:
        """``sg/cos_true/state``: the cosine between the synthetic gradient and the true future gradient,
        averaged over the boundaries of the last batch (``synthgrad.probe.boundary_gradient_snapshot``),
        where ``sg/cos/state`` compares with the bootstrapped target the synthesizer learns from."""
        model = self.model
        if model.synthesizer is None or self.last_batch is None:
            return {}
        batch, context = self.last_batch
        snapshot = boundary_gradient_snapshot(model.core, batch.inputs, self.chunk_loss(batch),
                                              self.config.truncation, model.synthesizer, boundary_context=context)
        if not snapshot:
            return {}
        cosines = [gradient_cosine(synthetic, true).item() for _, synthetic, true in snapshot]
        return {"sg/cos_true/state": sum(cosines) / len(cosines)}

    def is_finished(self) -> bool:
        return self.curriculum.max_length_solved >= self.config.max_length

    def summary(self, last_record: Mapping[str, Any]) -> dict[str, Any]:
        return {"max_length_solved": self.curriculum.max_length_solved, "final_length": self.curriculum.length,
                "task": self.config.task, **self.run_info()}

    def state_dict(self) -> dict[str, Any]:
        return {"curriculum": self.curriculum.state_dict(), "generator": self.generator.get_state(),
                "last_length": self.last_length}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.curriculum.load_state_dict(state["curriculum"])
        self.generator.set_state(state["generator"])
        self.last_length = state["last_length"]

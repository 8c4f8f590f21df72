"""One pipeline rank as a task of the training engine (``synthgrad.engine.Task``): its ``train_step(t)`` runs
this rank's part of the schedule for step ``t`` and leaves gradients; the engine steps the optimizer, keeps
the records (rank 0), checkpoints, resumes and writes the summary.

What every rank's task shares lives here: its data (``StageData``, handed in by the caller), its parameter
groups, the metrics of the last rank, evaluation through the pipeline, and the summary. The schedules'
executors (``synthgrad.pipeline.unlocked``, ``synthgrad.pipeline.lockstep``) subclass ``RankTask``.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import torch
from torch import Tensor

from synthgrad.engine.task import ParameterGroups, StepResult, Task
from synthgrad.pipeline.comm import EVALUATION, Channel
from synthgrad.pipeline.stage import Stage

MetricsFn = Callable[[Tensor, Tensor], Mapping[str, Tensor]]
"""``metrics_fn(output, target)``: batch means besides the loss, e.g. ``{"acc": ...}``; recorded as
``train/<name>`` every step and ``test/<name>`` at evaluations."""


@dataclass
class StageData:
    """What a rank draws, as functions of the step, so that every rank draws its part of the same batch
    without exchanging it (and a resumed run draws what the interrupted one would have). A rank calls only
    what it needs; the others may be ``None``.

    Args:
        batch_size: examples per step (messages are shaped ``(batch_size, *features)``).
        steps_per_epoch: steps in one pass over the data (``None``: no epochs; ``TrainConfig.steps`` is set).
        inputs: ``inputs(step)``, the network's input ``(B, ...)`` (first rank).
        targets: ``targets(step)``, what ``loss_fn`` compares the output with (last rank).
        context: ``context(step)``, the synthesizers' context ``(B, context_dim)`` for cDNI (ranks with a
            synthesizer; ``None``: unconditioned).
        eval_inputs, eval_targets: the evaluation batches' inputs (first rank) and targets (last rank).
    """

    batch_size: int
    steps_per_epoch: Optional[int] = None
    inputs: Optional[Callable[[int], Tensor]] = None
    targets: Optional[Callable[[int], Tensor]] = None
    context: Optional[Callable[[int], Tensor]] = None
    eval_inputs: Optional[Callable[[], Iterable[Tensor]]] = None
    eval_targets: Optional[Callable[[], Iterable[Tensor]]] = None


class RankTask(Task):
    """A pipeline rank's task: subclasses implement ``run_step`` (one step of their schedule).

    Args:
        stage: this rank's stage; ``stage.modules`` is what the engine checkpoints.
        channel: the messages to and from the other ranks.
        data: this rank's data.
        in_shape, out_shape: the feature shapes of the stage's input (``None`` on the first) and output.
        schedule: the schedule's name, for the summary.
        metrics_fn: batch means besides the loss (last rank), e.g. accuracy.
        run_info: what names the run in its summary.
        network_clock: processor seconds of the process's network thread so far (``None``: not measured).
    """

    progress_keys = ("train/loss", "train/acc", "test/acc")

    def __init__(self, stage: Stage, channel: Channel, data: StageData, *, in_shape: Optional[tuple[int, ...]],
                 out_shape: tuple[int, ...], schedule: str, metrics_fn: Optional[MetricsFn] = None,
                 run_info: Mapping[str, Any] = MappingProxyType({}),
                 network_clock: Callable[[], Optional[float]] = lambda: None) -> None:
        self.stage, self.channel, self.data, self.model = stage, channel, data, stage.modules
        self.in_shape, self.out_shape, self.schedule = in_shape, out_shape, schedule
        self.metrics_fn, self.run_info, self.network_clock = metrics_fn, dict(run_info), network_clock
        self.steps_per_epoch = data.steps_per_epoch
        self.device = next(stage.modules.parameters()).device
        self.rank, self.num_stages = stage.stage_index, stage.num_stages
        self.network_seconds: Optional[float] = 0.0
        self.best_acc: Optional[float] = None

    # what subclasses share ----------------------------------------------------------------------------

    @property
    def is_decoupled(self) -> bool:
        """Whether this rank's blocks learn only from the synthetic gradient at its output."""
        return False

    def parameter_groups(self) -> ParameterGroups:
        """The stage's blocks as ``decoupled`` when they learn from a synthetic gradient alone (the engine's
        ``decoupled_lr``), else as ``blocks``; the output synthesizer as ``synthesizers``."""
        blocks = list(self.stage.chain.parameters())
        synthesizer = self.stage.synthesizer
        synthesizers = [] if synthesizer is None else list(synthesizer.parameters())
        if self.is_decoupled:
            return ParameterGroups(decoupled=blocks, synthesizers=synthesizers)
        return ParameterGroups(blocks=blocks, synthesizers=synthesizers)

    def train_step(self, step: int) -> StepResult:
        before = self.network_clock()
        result = self.run_step(step)
        after = self.network_clock()
        if self.network_seconds is not None:
            self.network_seconds = None if None in (before, after) else self.network_seconds + after - before
        return result

    def run_step(self, step: int) -> StepResult:
        """This rank's actions of ``step`` in its schedule, leaving gradients; the loss on the last rank."""
        raise NotImplementedError

    def step_result(self, loss: Optional[Tensor], output: Optional[Tensor] = None,
                    target: Optional[Tensor] = None) -> StepResult:
        """The step's result: on the last rank its loss and ``train/*`` metrics; elsewhere nothing to record
        (a zero loss: in a pipeline the engine judges divergence on the recorded metrics)."""
        if loss is None:
            return StepResult(torch.zeros((), device=self.device))
        metrics = {} if self.metrics_fn is None or output is None else self.metrics_fn(output.detach(), target)
        return StepResult(loss, {"train/loss": loss, **{f"train/{key}": value for key, value in metrics.items()}})

    def close(self) -> None:
        """Wait for what is still on its way to this rank at the end of a run (nothing by default)."""

    # evaluation through the pipeline --------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Run the evaluation batches through every stage in eval mode; rank 0 returns the last rank's
        ``test/loss`` and ``test/<metric>`` (means over the examples), the others ``{}``."""
        chain = self.stage.chain
        chain.eval()
        try:
            outputs = self._evaluation_outputs()
            result = self._evaluation_metrics(outputs) if self.stage.is_last else self._send_on(outputs)
        finally:
            chain.train()
        self.channel.flush()
        if self.stage.is_last and not self.stage.is_first:
            self.channel.send_object(result, 0)
            self.channel.flush()
            return {}
        if self.stage.is_first and not self.stage.is_last:
            result = self.channel.recv_object(self.num_stages - 1)
        if self.stage.is_first and "test/acc" in result:
            self.best_acc = max(self.best_acc or 0.0, result["test/acc"])
        return result if self.stage.is_first else {}

    def _evaluation_outputs(self) -> Iterator[Tensor]:
        """The stage's output of each evaluation batch: from the data on the first rank, else from the
        batches the rank below sends (each preceded by its size; size 0 ends them)."""
        if self.stage.is_first:
            for inputs in self.data.eval_inputs():
                yield self.stage.chain(inputs.to(self.device))
            return
        while True:
            size = int(self.channel.recv((1,), self.rank - 1, EVALUATION, torch.int64).item())
            if size == 0:
                return
            yield self.stage.chain(self.channel.recv((size, *self.in_shape), self.rank - 1, EVALUATION))

    def _send_on(self, outputs: Iterator[Tensor]) -> dict[str, float]:
        for output in outputs:
            self.channel.send(torch.tensor([len(output)], device=self.device), self.rank + 1, EVALUATION)
            self.channel.send(output, self.rank + 1, EVALUATION)
        self.channel.send(torch.zeros(1, dtype=torch.int64, device=self.device), self.rank + 1, EVALUATION)
        return {}

    def _evaluation_metrics(self, outputs: Iterator[Tensor]) -> dict[str, float]:
        sums: dict[str, Tensor] = {}
        count = 0
        for output, target in zip(outputs, self.data.eval_targets(), strict=True):
            target = target.to(self.device)
            values = {"loss": self.stage.loss_fn(output, target),
                      **({} if self.metrics_fn is None else self.metrics_fn(output, target))}
            for key, value in values.items():
                sums[key] = sums.get(key, 0) + value * len(target)
            count += len(target)
        return {f"test/{key}": float(total) / count for key, total in sums.items()}

    # the summary and the state -----------------------------------------------------------------------------

    def summary(self, last_record: Mapping[str, Any]) -> dict[str, Any]:
        """The run's summary on rank 0: ``test_<metric>`` of the last evaluation, ``best_test_acc``, the
        epochs, the schedule and the number of stages, the synthesizers' last ``sg/*`` values."""
        tests = {f"test_{key[len('test/'):]}": value for key, value in last_record.items() if key.startswith("test/")}
        best = {} if self.best_acc is None else {"best_test_acc": self.best_acc}
        return {**tests, **best, "epochs": last_record.get("epoch"), "schedule": self.schedule,
                "num_stages": self.num_stages,
                **{key: value for key, value in last_record.items() if key.startswith("sg/")}, **self.run_info}

    def state_dict(self) -> dict[str, Any]:
        return {"network_seconds": self.network_seconds, "best_acc": self.best_acc}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.network_seconds, self.best_acc = state["network_seconds"], state["best_acc"]

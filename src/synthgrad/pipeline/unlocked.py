"""The update-unlocked schedule's executor (paper section 2, "update unlock", across processes): a rank's
``train_step(t)`` runs what ``unlocked_step`` plans for ``t``: ``F(t)``, then ``S(t - max_staleness)``; the
engine then applies both (``U``).

No rank waits for the pipeline to drain, not even at an interval's end: the outputs, contexts and target
receives of the last ``max_staleness`` steps are part of the task's state (a checkpoint first waits for the
targets to arrive), so a run resumed from any checkpoint continues bit-identically. At the end of the run
the targets of its last ``max_staleness`` steps are received (the rank above's sends complete) and dropped:
their synthesizer steps would come after the last update.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from synthgrad.engine.task import StepResult
from synthgrad.errors import InvalidConfig
from synthgrad.pipeline.comm import ACTIVATION, TARGET
from synthgrad.pipeline.schedule import FORWARD, SYNTH, trains_synthesizer, unlocked_step
from synthgrad.pipeline.task import RankTask

_Pending = tuple[Tensor, Optional[Tensor], Callable[[], Tensor]]
"""A step whose target is on its way: the stage's detached output, the context, and what waits for the target."""


class UnlockedTask(RankTask):
    """A rank of the update-unlocked schedule.

    Args (besides ``RankTask``'s):
        total_steps: the run's length (no receive is posted beyond it).
        max_staleness: ``S(t - max_staleness)`` follows ``F(t)``.
        synth_every: the synthesizers train on the targets of the steps that are multiples of it only.
        stats_every: the synthesizer's loss and cosine are measured at the steps the engine measures at in
            one process (every ``stats_every``-th and the last); with ``synth_every`` > 1, at the first
            synthesizer step from there on.
    """

    def __init__(self, *args: Any, total_steps: int, max_staleness: int, synth_every: int = 1, stats_every: int = 1,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.stage.is_last and self.stage.synthesizer is None:
            raise InvalidConfig(f"{{0}} unlocked needs a synthesizer at every stage boundary; the output of block "
                                f"{self.model.last_block} (stage {self.rank}) has none", "schedule")
        self.total_steps, self.max_staleness = total_steps, max_staleness
        self.synth_every, self.stats_every = synth_every, stats_every
        self.cut = self.model.cut_name
        self._pending: dict[int, _Pending] = {}
        self._next_input: Optional[tuple[int, Callable[[], Tensor]]] = None  # a receive posted one step ahead
        self._measurement_due = False
        self._reset_interval()

    @property
    def is_decoupled(self) -> bool:
        return not self.stage.is_last

    def _reset_interval(self) -> None:
        self.sg_sum, self.sg_count = torch.zeros(2, device=self.device), 0  # (loss, cosine) of measured targets
        self.synth_count, self.staleness_sum, self.staleness_max = 0, 0, 0

    def run_step(self, step: int) -> StepResult:
        result = self.step_result(None)
        self._measurement_due |= (step + 1) % self.stats_every == 0 or step + 1 == self.total_steps
        for action in unlocked_step(self.rank, self.num_stages, step, self.max_staleness, self.synth_every):
            if action.op == FORWARD:
                result = self._forward(step)
            elif action.op == SYNTH:
                self._train_synthesizer(action.step, step)
        return result  # UPDATE: the engine's optimizer step

    def _input(self, step: int) -> Tensor:
        """The input of ``step``: the data on the first rank, else the activation from the rank below. Where
        receives match by tag, the next step's is posted now, so its message is copied in while this rank
        computes (gloo moves a message once its receive is posted)."""
        if self.stage.is_first:
            return self.data.inputs(step).to(self.device)
        shape = (self.data.batch_size, *self.in_shape)
        posted, self._next_input = self._next_input, None
        wait = posted[1] if posted is not None and posted[0] == step else self.channel.post_recv(
            shape, self.rank - 1, ACTIVATION)
        if self.channel.matches_tags and step + 1 < self.total_steps:
            self._next_input = (step + 1, self.channel.post_recv(shape, self.rank - 1, ACTIVATION))
        return wait()

    def _forward(self, step: int) -> StepResult:
        """``F(step)``: the output goes up as soon as it exists, then the blocks' gradients from the synthetic
        gradient at the output (or the loss), then the input's target goes down."""
        activation = self._input(step)
        is_last = self.stage.is_last
        context = None if is_last or self.data.context is None else self.data.context(step).to(self.device)
        target = self.data.targets(step).to(self.device) if is_last else None
        has_target = trains_synthesizer(step, self.synth_every)  # else the rank above sends no target
        forward = self.stage.forward(activation, needs_input_grad=has_target)
        if not is_last:
            output = forward.output.detach()
            self.channel.send(output, self.rank + 1, ACTIVATION)
            if has_target:
                self._pending[step] = (output, context, self.channel.post_recv(output.shape, self.rank + 1, TARGET))
        backward = self.stage.backward_unlocked(forward, context=context, target=target)
        if backward.input_target is not None:
            self.channel.send(backward.input_target, self.rank - 1, TARGET)
        return self.step_result(backward.loss, forward.output, target)

    def _train_synthesizer(self, step: int, now: int) -> None:
        """``S(step)`` at step ``now``: the synthesizer's gradient towards the target that arrived for ``step``."""
        output, context, target_arrived = self._pending.pop(step)
        measured = self.stage.synthesizer_backward(output, context, target_arrived(), measure=self._measurement_due)
        self._measurement_due = False
        if measured is not None:
            self.sg_sum += measured
            self.sg_count += 1
        self.synth_count += 1
        self.staleness_sum += now - step
        self.staleness_max = max(self.staleness_max, now - step)

    def end_interval(self) -> dict[str, float]:
        """``sg/loss/<cut>`` and ``sg/cos/<cut>`` over the interval's measured targets, ``sg/staleness/<cut>``
        and ``sg/staleness_max/<cut>``: block updates between a prediction and the synthesizer's step on it."""
        values: dict[str, float] = {}
        if self.sg_count:
            loss, cosine = (self.sg_sum / self.sg_count).tolist()
            values.update({f"sg/loss/{self.cut}": loss, f"sg/cos/{self.cut}": cosine})
        if self.synth_count:
            values.update({f"sg/staleness/{self.cut}": self.staleness_sum / self.synth_count,
                           f"sg/staleness_max/{self.cut}": self.staleness_max})
        self._reset_interval()
        return values

    def close(self) -> None:
        """Receive the targets of the run's last ``max_staleness`` steps, and drop them."""
        for _, _, target_arrived in self._pending.values():
            target_arrived()
        self._pending.clear()

    def state_dict(self) -> dict[str, Any]:
        """Besides ``RankTask``'s: the steps whose synthesizer step is still to come, with their targets
        (waited for here), the interval's running sums and whether a measurement is due."""
        pending = {step: (output, context, target_arrived())
                   for step, (output, context, target_arrived) in self._pending.items()}
        interval = {"sg_sum": self.sg_sum.cpu(), "sg_count": self.sg_count, "synth_count": self.synth_count,
                    "staleness_sum": self.staleness_sum, "staleness_max": self.staleness_max,
                    "measurement_due": self._measurement_due}
        return {**super().state_dict(), "pending": pending, "interval": interval}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._pending = {step: (output, context, _arrived(target))
                         for step, (output, context, target) in state["pending"].items()}
        interval = state["interval"]
        self.sg_sum, self.sg_count = interval["sg_sum"].to(self.device), interval["sg_count"]
        self.synth_count, self.staleness_sum = interval["synth_count"], interval["staleness_sum"]
        self.staleness_max, self._measurement_due = interval["staleness_max"], interval["measurement_due"]


def _arrived(target: Tensor) -> Callable[[], Tensor]:
    """What stands for a receive whose target is already here (restored from a checkpoint)."""
    return lambda: target

"""What the engine trains: a ``Task`` says how to compute one step's gradients, how to evaluate, and what a
run's summary holds; the engine (``synthgrad.engine.loop.train``) does everything runs share.

A task never steps an optimizer. Its ``train_step`` leaves gradients in ``.grad`` (through cuts, synthetic
gradients reach the blocks below them and targets reach the synthesizers inside one backward pass) and
returns the step's loss; the engine checks the step, updates the parameters and keeps the records. That is
the calling convention of ``torch.distributed.pipelining`` too (``schedule.step(x)``, then
``optimizer.step()``), so one pipeline rank is a task whose step runs its schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Union

from torch import Tensor, nn

from synthgrad.interfaces import synthesizer_parameters

Metric = Union[Tensor, float]


class StepResult(NamedTuple):
    """One step's ``loss`` (a scalar, for the divergence guard; any graph is ignored) and ``metrics``: values
    averaged over the steps of a logging interval (e.g. ``{"train/loss": ..., "train/acc": ...}``). Tensors
    are summed where they are, without a host synchronisation, until the interval ends."""

    loss: Tensor
    metrics: Mapping[str, Metric] = {}


@dataclass
class ParameterGroups:
    """A task's trainable parameters by the learning rate they take (``TrainConfig``): ``blocks`` learn from
    the true gradient (``lr``), ``decoupled`` only from synthetic gradients (``decoupled_lr``), and
    ``synthesizers`` regress onto targets (``synth_lr``). Parameters without ``requires_grad`` are left out."""

    blocks: list[nn.Parameter] = field(default_factory=list)
    decoupled: list[nn.Parameter] = field(default_factory=list)
    synthesizers: list[nn.Parameter] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("blocks", "decoupled", "synthesizers"):
            setattr(self, name, [param for param in getattr(self, name) if param.requires_grad])


def parameter_groups(model: nn.Module) -> ParameterGroups:
    """The groups of any model: the parameters of its synthesizers (``synthesizer_parameters``), those a
    model declares as learning from synthetic gradients alone through ``decoupled_parameters()`` (as
    ``DecoupledSequential`` does: the blocks below its top cut), and the rest."""
    synthesizers = list(synthesizer_parameters(model))
    declared = getattr(model, "decoupled_parameters", None)
    decoupled = list(declared()) if callable(declared) else []
    taken = {id(param) for param in synthesizers + decoupled}
    blocks = [param for param in model.parameters() if id(param) not in taken]
    return ParameterGroups(blocks, decoupled, synthesizers)


class Task:
    """Base class of what the engine trains; override ``train_step`` and what else the task has.

    Attributes:
        model: every module the task trains (synthesizers included): what the engine checkpoints, and
            where the divergence guard and the synthesizer statistics look.
        steps_per_epoch: steps in one pass over the task's data (``None``: the task has no epochs, so
            ``TrainConfig.steps`` must be set).
        progress_keys: record keys shown beside the progress bar.
    """

    model: nn.Module
    steps_per_epoch: Optional[int] = None
    progress_keys: tuple[str, ...] = ()

    def parameter_groups(self) -> ParameterGroups:
        """The parameters the engine's optimizer steps, by learning rate (default: ``parameter_groups``)."""
        return parameter_groups(self.model)

    def train_step(self, step: int) -> StepResult:
        """Compute the gradients of training step ``step`` (0-based) into ``.grad`` (they start at ``None``)."""
        raise NotImplementedError

    def end_interval(self) -> dict[str, float]:
        """Values that describe the task at the end of a logging interval (e.g. a curriculum's length);
        added to the interval's record."""
        return {}

    def evaluate(self) -> dict[str, float]:
        """Evaluation metrics (e.g. ``test/acc``), at every ``TrainConfig.eval_every`` steps and at the end."""
        return {}

    def is_finished(self) -> bool:
        """Whether the task has reached its goal before the last step (asked after every step)."""
        return False

    def summary(self, last_record: Mapping[str, Any]) -> dict[str, Any]:
        """The task's part of ``summary.json``, given the latest value of every record key."""
        return {}

    def finish(self, run_dir: Path) -> None:
        """Write what a finished run keeps besides the engine's files (e.g. samples for figures)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything besides ``model`` that continuing the run exactly needs (RNG streams, positions)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``."""

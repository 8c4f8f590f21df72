"""The one training engine: ``train(task, config, run_dir)`` runs any ``Task`` (a classifier, a recurrent
task, a pipeline rank) with what every run shares: optimizer and schedule, divergence guard, records,
checkpoints and exact resume, Ctrl-C, progress and summary."""
from synthgrad.engine.classification import ClassificationTask, Split
from synthgrad.engine.config import TrainConfig
from synthgrad.engine.loop import LocalWorld, World, train
from synthgrad.engine.task import ParameterGroups, StepResult, Task, parameter_groups

__all__ = [
    "ClassificationTask",
    "LocalWorld",
    "ParameterGroups",
    "Split",
    "StepResult",
    "Task",
    "TrainConfig",
    "World",
    "parameter_groups",
    "train",
]

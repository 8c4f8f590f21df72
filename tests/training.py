"""Shared by the tests that train a classifier on the engine: one call with the task's and the engine's
options side by side, as the command line takes them."""
from pathlib import Path

from torch import nn

from synthgrad import ClassificationTask, Split, TrainConfig, train

TASK_OPTIONS = ("batch_size", "use_context", "num_classes", "synth_every", "update_prob", "seed")
"""Options of ``ClassificationTask``; every other option is a ``TrainConfig`` field."""


def train_classifier(model: nn.Module, train_split: Split, test_split: Split, options: dict, run_dir: Path,
                     **kwargs) -> dict:
    """``synthgrad.train`` of a ``ClassificationTask`` of ``model`` with ``options`` (task and engine fields)."""
    task = ClassificationTask(model, train_split, test_split,
                              **{key: value for key, value in options.items() if key in TASK_OPTIONS})
    config = TrainConfig(**{key: value for key, value in options.items() if key not in TASK_OPTIONS})
    return train(task, config, run_dir, **kwargs)

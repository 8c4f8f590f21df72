"""What a pipeline run does with each option of the training loop: honour it, or refuse it before any
process starts with one line. Never ignore it."""
from dataclasses import fields, replace

import pytest

from synthgrad.errors import SynthgradError
from synthgrad.experiments.mnist import ClassifierConfig
from synthgrad.pipeline.config import PipelineConfig, PipelineRun, check_pipeline_run
from synthgrad.trainer import TrainConfig

HONOURED = {
    "epochs", "steps", "batch_size", "seed", "device", "progress", "num_classes", "use_context",  # the data and run
    "lr", "synth_lr", "decoupled_lr", "optimizer", "momentum", "lr_schedule", "warmup_steps",  # the optimizers
    "synth_every", "stats_every",  # the unlocked plan and its measurements (test_pipeline_runtime)
    "eval_every", "log_every", "checkpoint_every", "keep_checkpoints",  # the segments
    "on_divergence",  # "stop": every rank stops at the first non-finite interval (test_pipeline_runtime)
}
REFUSED = {  # the option, a value a pipeline cannot honour, what the message says
    "update_prob": (0.5, "--update-prob are for one process"),
    "on_divergence": ("skip", "--on-divergence skip is for one process"),
}


def run_with(**train) -> PipelineRun:
    classifier = ClassifierConfig(layers=3, width=32, dry_run=True, train=replace(TrainConfig(use_context=True), **train))
    return PipelineRun(classifier, PipelineConfig(num_stages=2))


def test_every_option_of_the_training_loop_is_honoured_or_refused():
    assert {field.name for field in fields(TrainConfig)} == HONOURED | set(REFUSED), (
        "a new TrainConfig option: make the pipeline (synthgrad/pipeline/runtime.py) honour it or "
        "check_pipeline_run refuse it, and list it here")


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_an_option_a_pipeline_cannot_honour_is_refused_with_one_line(name):
    value, message = REFUSED[name]
    with pytest.raises(SynthgradError, match=message) as refused:
        check_pipeline_run(run_with(**{name: value}))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("name", ["stats_every", "synth_every"])
def test_the_honoured_counts_are_checked_like_the_training_loop_checks_them(name):
    with pytest.raises(SynthgradError, match=f"{name} must be positive"):
        check_pipeline_run(run_with(**{name: 0}))

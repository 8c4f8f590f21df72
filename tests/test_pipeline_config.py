"""What a pipeline run does with each option of the training loop and of the classifier: honour it, or
refuse it before any process starts with one line naming the field. Never ignore it."""
from dataclasses import asdict, fields, replace

import pytest

from synthgrad.engine import TrainConfig
from synthgrad.errors import InvalidConfig
from synthgrad.experiments.classifier_config import ClassifierConfig
from synthgrad.experiments.pipeline_classifier import PipelineRun, check_pipeline_run, pipeline_run_from_dict
from synthgrad.pipeline import PipelineConfig
from synthgrad.pipeline.config import check_pipeline_config, config_differences

HONOURED_TRAIN = {
    "epochs", "steps", "progress", "tensorboard",  # the run (rank 0 writes the records and shows progress)
    "lr", "synth_lr", "decoupled_lr", "optimizer", "momentum", "lr_schedule", "warmup_steps",  # the engine's optimizer
    "stats_every",  # the synthesizers' measurements (test_pipeline_runtime)
    "eval_every", "log_every", "checkpoint_every", "keep_checkpoints",  # the engine's intervals
    "on_divergence",  # "stop": every rank stops at the first non-finite interval (test_pipeline_runtime)
    "record_seconds",  # always on: a pipeline run's records keep train/seconds
    "threads",  # each rank's (one when unset: one simulated device per process)
}
HONOURED_CLASSIFIER = {
    "dataset", "data_dir", "download", "dry_run", "batch_size", "seed", "device",  # the data and where it runs
    "model", "method", "layers", "width", "synth_layers", "synth_width", "synth_rank",  # the model every rank builds
    "synth_every",  # the unlocked plan (test_pipeline_runtime)
    "train",
}
REFUSED = {  # (config, field): a value a pipeline cannot honour, what the message says
    ("train", "on_divergence"): ("skip", "on_divergence skip is for one process"),
    ("classifier", "update_prob"): (0.5, "update_prob is for one process"),
    ("classifier", "forward_unlock"): (True, "forward_unlock is for one process"),
    ("classifier", "method"): ("no-backprop", "method no-backprop cannot be split into stages"),
}


def run_with(**options) -> PipelineRun:
    train = {key: value for key, value in options.items() if key in {field.name for field in fields(TrainConfig)}}
    classifier = {key: value for key, value in options.items() if key not in train}
    return PipelineRun(ClassifierConfig(layers=3, width=32, dry_run=True, train=replace(TrainConfig(), **train),
                                        **classifier), PipelineConfig(num_stages=2))


def test_every_option_is_honoured_or_refused():
    refused = {(config, name) for config, name in REFUSED}
    assert {field.name for field in fields(TrainConfig)} == HONOURED_TRAIN | {n for c, n in refused if c == "train"}, (
        "a new TrainConfig option: make the pipeline honour it or check_pipeline_config refuse it, and list it here")
    assert {field.name for field in fields(ClassifierConfig)} == (
        HONOURED_CLASSIFIER | {n for c, n in refused if c == "classifier"}), (
        "a new ClassifierConfig option: make the pipeline honour it or check_pipeline_run refuse it, and list it here")


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_an_option_a_pipeline_cannot_honour_is_refused_with_one_line_naming_it(key):
    value, message = REFUSED[key]
    with pytest.raises(InvalidConfig, match=message) as refused:
        check_pipeline_run(run_with(**{key[1]: value}))
    assert "\n" not in str(refused.value) and refused.value.fields[0] == key[1]


@pytest.mark.parametrize("name", ["stats_every", "synth_every"])
def test_the_honoured_counts_are_checked_like_the_training_loop_checks_them(name):
    with pytest.raises(InvalidConfig, match=f"{name} must be positive"):
        check_pipeline_run(run_with(**{name: 0}))


@pytest.mark.parametrize("change, message, fields_named", [
    ({"schedule": "bogus"}, "schedule 'bogus': choose one of auto, unlocked", ("schedule",)),
    ({"num_stages": 1}, "num_stages 1: a pipeline needs at least 2 stages", ("num_stages",)),
    ({"micro_batches": 3}, "micro_batches 3 must divide batch_size 32", ("micro_batches", "batch_size")),
    ({"max_staleness": -1}, "max_staleness must be >= 0", ("max_staleness",)),
    ({"timeout_s": 0}, "timeout_s must be positive", ("timeout_s",)),
])
def test_the_library_names_the_pipeline_fields_at_fault(change, message, fields_named):
    config = replace(PipelineConfig(schedule="lockstep"), **change)
    with pytest.raises(InvalidConfig, match=message) as refused:
        check_pipeline_config(config, TrainConfig(), batch_size=32, has_synthesizers=False)
    assert refused.value.fields == fields_named


def test_a_schedule_must_suit_the_model():
    assert check_pipeline_config(PipelineConfig(), TrainConfig(), batch_size=32, has_synthesizers=True) == "unlocked"
    assert check_pipeline_config(PipelineConfig(), TrainConfig(), batch_size=32, has_synthesizers=False) == "lockstep"
    with pytest.raises(InvalidConfig, match="schedule unlocked needs synthesizers"):
        check_pipeline_config(PipelineConfig(schedule="unlocked"), TrainConfig(), batch_size=32, has_synthesizers=False)
    with pytest.raises(InvalidConfig, match="schedule 1f1b is exact backprop"):
        check_pipeline_config(PipelineConfig(schedule="1f1b"), TrainConfig(), batch_size=32, has_synthesizers=True)


def test_a_pipeline_run_records_its_seconds_and_survives_its_config_json():
    run = run_with(seed=3)
    assert run.classifier.train.record_seconds
    assert pipeline_run_from_dict(asdict(run)) == run


def test_config_differences_name_the_dotted_keys():
    assert config_differences({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 5}, "d": 3, "e": 0}) == [
        "a.c (2 vs 5)", "e (None vs 0)"]

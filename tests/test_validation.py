"""Tests for synthgrad.experiments.validation: a run's configuration is refused before any work, with
one message that names the fields at fault and what is allowed, spelled for the library or the CLI."""
from dataclasses import replace

import pytest
import torch

from synthgrad.engine import TrainConfig
from synthgrad.errors import InvalidConfig
from synthgrad.experiments.classifier_config import ClassifierConfig, build_model
from synthgrad.experiments.gist import build_gist_model, gist_config
from synthgrad.experiments.validation import IMAGE_SHAPES, validate_classifier_config

FLAGS = {"model": "--model", "dataset": "--dataset", "method": "--method", "synth_lr": "--synth-lr",
         "synth_rank": "--synth-rank"}


def _refusal(config: ClassifierConfig, explicit=()) -> InvalidConfig:
    with pytest.raises(InvalidConfig) as raised:
        validate_classifier_config(config, build_model, explicit=explicit)
    return raised.value


def test_a_model_on_images_of_another_shape_names_the_datasets_it_takes():
    """The gist's network is built for 28x28 digits whatever the dataset."""
    config = replace(gist_config("dni"), dataset="cifar-10")
    with pytest.raises(InvalidConfig) as raised:
        validate_classifier_config(config, build_gist_model)
    error = raised.value
    assert error.spelled(FLAGS).startswith("--model gist does not take --dataset cifar-10's 3x32x32 images (")
    assert error.spelled(FLAGS).endswith("choose --dataset mnist or fashion-mnist, or another --model")
    assert str(error).startswith("model gist does not take dataset cifar-10's")  # the library's spelling
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("model", ["mlp", "cnn", "fcn3", "cnn4"])
@pytest.mark.parametrize("dataset", IMAGE_SHAPES)
def test_presets_take_every_dataset(model, dataset):
    validate_classifier_config(ClassifierConfig(model=model, dataset=dataset, method="dni"), build_model)


def test_the_gist_takes_mnist():
    validate_classifier_config(gist_config("cdni"), build_gist_model)


def test_validation_draws_nothing_from_the_callers_generator():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    validate_classifier_config(ClassifierConfig(), build_model)
    assert torch.equal(torch.rand(3), expected)


def test_options_only_count_against_the_method_when_given():
    validate_classifier_config(ClassifierConfig(method="backprop"), build_model)  # synth defaults are fine
    for method in ("backprop", "no-backprop"):
        error = _refusal(ClassifierConfig(method=method), explicit={"synth_lr"})
        assert error.spelled(FLAGS) == (f"--synth-lr sets synthesizers, but --method {method} has none; drop "
                                        "--synth-lr or choose --method dni or cdni")
    error = _refusal(ClassifierConfig(model="fcn4"), explicit={"layers"})
    assert str(error) == "layers sets the depth of model mlp; model fcn4 fixes its own depth"
    error = _refusal(ClassifierConfig(method="dni", synth_rank=8), explicit={"synth_rank"})
    assert "--synth-rank applies to cDNI's linear synthesizers only, not to --method dni" in error.spelled(FLAGS)


@pytest.mark.parametrize("config, message", [
    (ClassifierConfig(layers="3"), "layers must be an int, got '3'"),
    (ClassifierConfig(train=TrainConfig(lr="fast")), "lr must be a number, got 'fast'"),
    (ClassifierConfig(train=TrainConfig(lr=1)), None),  # an int where a float is expected
    (ClassifierConfig(synth_rank=None, train=TrainConfig(steps=None, decoupled_lr=None)), None),  # Optional
    (ClassifierConfig(train=TrainConfig(steps=2.5)), "steps must be an int, got 2.5"),
    (ClassifierConfig(train=TrainConfig(epochs=True)), "epochs must be an int, got True"),
    (ClassifierConfig(forward_unlock=1), "forward_unlock must be true or false, got 1"),
    (ClassifierConfig(batch_size=0), "batch_size must be positive, got 0"),
    (ClassifierConfig(update_prob=1.5), "update_prob must be a probability in [0, 1], got 1.5"),
    (ClassifierConfig(dataset=3), "dataset must be a string, got 3"),
    (ClassifierConfig(dataset="svhn"), "dataset must be one of mnist, fashion-mnist, cifar-10, got 'svhn'"),
    (ClassifierConfig(synth_layers=-1), "synth_layers must be >= 0, got -1"),
    (ClassifierConfig(train=TrainConfig(on_divergence="retry")), "on_divergence must be one of stop, skip"),
])
def test_bad_values_are_named(config, message):
    if message is None:
        validate_classifier_config(config, build_model)
    else:
        assert message in str(_refusal(config))

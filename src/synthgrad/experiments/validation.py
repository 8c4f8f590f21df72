"""Validate an image-classifier run's configuration before any work: no data loaded, nothing written.

One function for library users and the command line. Each problem raises ``InvalidConfig``, whose
message names the config fields at fault (``batch_size``) and which the command line re-spells with its
flags (``--batch-size``), and says what would be allowed.
"""
from __future__ import annotations

import re
from dataclasses import fields, replace
from typing import Callable, Collection

import torch
from torch import nn

from synthgrad.data import IMAGE_SHAPES
from synthgrad.engine.classification import validate_sampling
from synthgrad.engine.config import validate_train_config
from synthgrad.errors import InvalidConfig
from synthgrad.experiments.classifier_config import ClassifierConfig

SYNTHESIZER_OPTIONS = ("synth_layers", "synth_width", "synth_rank", "synth_lr", "decoupled_lr")
"""Fields that only mean something where there are synthesizers (``decoupled_lr`` is the rate of the
blocks that learn from them)."""
METHODS_WITHOUT_SYNTHESIZERS = ("backprop", "no-backprop")


def validate_classifier_config(
    config: ClassifierConfig,
    model_builder: Callable[[ClassifierConfig], nn.Module],
    *,
    explicit: Collection[str] = (),
) -> None:
    """Raise ``InvalidConfig`` if ``config`` cannot work. Checks, in order: the ``TrainConfig``
    (``engine.config.validate_train_config``), the batch options, ``synth_layers``, options set on purpose
    that the method has no use for, and that the model ``model_builder`` builds takes the dataset's images.

    Args:
        config: the run's configuration; a field of the wrong type (e.g. from an edited
            ``config.json``) is an error too.
        model_builder: what will build the model (e.g. ``classifier_config.build_model``); it is built once here,
            on a forked RNG, and given one blank image of the dataset's shape.
        explicit: the fields the user set on purpose (the command line passes the options it was
            given). Defaults cannot tell these apart, so only these are checked against the method:
            a synthesizer option with a method that has none (``METHODS_WITHOUT_SYNTHESIZERS``),
            ``synth_rank`` with any method but cDNI; ``layers`` with any model but ``mlp``.
    """
    _check_types(config)
    _check_types(config.train)
    validate_train_config(config.train)
    validate_sampling(config.batch_size, config.synth_every, config.update_prob)
    if config.synth_layers < 0:
        raise InvalidConfig(f"{{0}} must be >= 0, got {config.synth_layers}", "synth_layers")
    if config.method in METHODS_WITHOUT_SYNTHESIZERS:
        for field in SYNTHESIZER_OPTIONS:
            if field in explicit:
                raise InvalidConfig(f"{{0}} sets synthesizers, but {{1}} {config.method} has none; drop {{0}} or "
                                    "choose {1} dni or cdni", field, "method")
    elif "synth_rank" in explicit and config.method != "cdni":
        raise InvalidConfig(f"{{0}} applies to cDNI's linear synthesizers only, not to {{1}} {config.method}; "
                            "drop {0} or choose {1} cdni", "synth_rank", "method")
    if "layers" in explicit and config.model != "mlp":
        raise InvalidConfig(f"{{0}} sets the depth of {{1}} mlp; {{1}} {config.model} fixes its own depth",
                            "layers", "model")
    _check_input_shape(config, model_builder)


_SIMPLE_TYPE = re.compile(r"^(Optional\[)?(int|float|str|bool)\]?$")
_KINDS = {"int": ((int,), "an int"), "float": ((int, float), "a number"), "str": ((str,), "a string"),
          "bool": ((bool,), "true or false")}
"""What each simple annotation admits (an int where a float is expected is fine), and its name."""


def _check_types(config: object) -> None:
    """Each field annotated ``int``, ``float``, ``str`` or ``bool`` (or ``Optional`` of one) holds that
    (or ``None``); fields of other types are checked elsewhere (the nested ``TrainConfig`` on its own)."""
    for field in fields(config):  # type: ignore[arg-type]
        annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
        match = _SIMPLE_TYPE.match(annotation)
        value = getattr(config, field.name)
        if match is None or value is None and match.group(1):
            continue
        kinds, kind = _KINDS[match.group(2)]
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            raise InvalidConfig(f"{{0}} must be {kind}, got {value!r}", field.name)


def _check_input_shape(config: ClassifierConfig, model_builder: Callable[[ClassifierConfig], nn.Module]) -> None:
    if config.dataset not in IMAGE_SHAPES:
        raise InvalidConfig(f"{{0}} must be one of {', '.join(IMAGE_SHAPES)}, got {config.dataset!r}",
                            "dataset")
    problem = _input_problem(config, model_builder)
    if problem is None:
        return
    shape = "x".join(map(str, IMAGE_SHAPES[config.dataset]))
    fits = [name for name in IMAGE_SHAPES if name != config.dataset and
            _input_problem(replace(config, dataset=name), model_builder) is None]
    allowed = f"choose {{1}} {' or '.join(fits)}" if fits else "no dataset fits it"
    raise InvalidConfig(f"{{0}} {config.model} does not take {{1}} {config.dataset}'s {shape} images ({problem}); "
                        f"{allowed}, or another {{0}}", "model", "dataset")


def _input_problem(config: ClassifierConfig, model_builder: Callable[[ClassifierConfig], nn.Module]) -> "str | None":
    """``None`` if the model built for ``config`` maps one blank image of its dataset to class scores,
    else the first line of the error it raised."""
    with torch.random.fork_rng(devices=[]):  # building draws initial weights; the caller's RNG is its own
        model = model_builder(config).eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *IMAGE_SHAPES[config.dataset]))
    except RuntimeError as error:
        return str(error).splitlines()[0]
    return None



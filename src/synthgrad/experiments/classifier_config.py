"""What defines an image-classifier run: ``ClassifierConfig``, the defaults that depend on the model and the
method (each measured, see its docstring), and the network a configuration names."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from synthgrad.data import DATASET_NAMES, IMAGE_SHAPES
from synthgrad.decoupled import DecoupledSequential
from synthgrad.engine import TrainConfig
from synthgrad.errors import InvalidConfig
from synthgrad.experiments.image_models import (
    CNN_PRESETS,
    FCN_PRESETS,
    MLP_MODELS,
    MODELS,
    PAPER_CNN_FILTERS,
    build_cnn,
    build_mlp,
)

DATASETS = DATASET_NAMES
DRY_RUN_STEPS = 3
NUM_CLASSES = 10
"""Classes of every dataset here (MNIST, Fashion-MNIST, CIFAR-10)."""

CDNI_SYNTH_RANK = 32
"""Rank of the default MLP's cDNI synthesizers (``None``: the paper's full linear map): the same accuracy and
cosines in less time (docs/mnist.md#cdni-a-rank-32-synthesizer)."""
DNI_DECOUPLED_LR = 3e-5
"""Learning rate of the blocks below the top cut under unconditioned DNI (the MLPs and the paper's CNNs; the
top block keeps ``lr``). Those blocks follow synthetic gradients that, for most of a short run, point
nowhere in particular; moving slowly limits the harm (docs/mnist.md#dni-the-slower-lower-blocks)."""
PAPER_TRAINING = {"optimizer": "adam", "lr": 3e-5, "synth_lr": 3e-5, "batch_size": 256, "steps": 500_000,
                  "lr_schedule": "constant", "warmup_steps": 0}
"""The paper's optimisation for its feed-forward experiments (section 3.1). The defaults reach the same
accuracies on the MLPs in 1/100 of the steps, which is what a 2-core CPU allows
(docs/mnist.md#the-defaults-and-why)."""
CONV_TRAINING = {"synth_lr": 1e-4, "warmup_steps": 50, "batch_size": 64}
"""Defaults of the CNNs for every method. A conv synthesizer's output layer sums 5x5 x channels inputs, so
Adam's first steps at full rate make its outputs far larger than its targets and the blocks below follow that
noise: a slower rate and a warm-up. Batch 64: one epoch gives the synthesizers twice the steps
(docs/mnist.md#the-cnns-warm-up-batch-64-and-cdnis-synthesizer-rate)."""
CONV_CDNI_SYNTH_LR = 3e-4
"""cDNI's synthesizer rate on the CNNs: with the label planes its targets are easier to fit, and a faster
synthesizer serves the blocks below better within one epoch (same docs section as ``CONV_TRAINING``)."""


def training_defaults(model: str, method: str) -> dict[str, Any]:
    """Options (``ClassifierConfig`` or ``TrainConfig`` fields, see ``classifier_config``) whose defaults
    depend on the model and method: slower decoupled blocks for DNI (``DNI_DECOUPLED_LR``) except on the
    small ``cnn``, where they learn best at the full rate; gentler synthesizer training for the CNNs
    (``CONV_TRAINING``, ``CONV_CDNI_SYNTH_LR``)."""
    slow_blocks = {"decoupled_lr": DNI_DECOUPLED_LR} if method == "dni" and model != "cnn" else {}
    if model in MLP_MODELS:
        return slow_blocks
    if method == "cdni":
        return {**CONV_TRAINING, "synth_lr": CONV_CDNI_SYNTH_LR}
    return {**CONV_TRAINING, **slow_blocks}


@dataclass
class ClassifierConfig:
    """Everything that defines an image-classifier run; written to ``config.json`` as resolved. ``train``
    holds the engine's knobs; the fields here say what is trained on what, and how batches are drawn
    (``synthgrad.engine.ClassificationTask``)."""

    dataset: str = "mnist"
    data_dir: str = ""
    download: bool = True
    model: str = "mlp"
    method: str = "cdni"
    layers: int = 3
    width: int = 256
    synth_layers: int = 2
    synth_width: Optional[int] = None
    """Hidden units (MLP) or filters (CNN) of each DNI synthesizer; ``None``: the model's default."""
    synth_rank: Optional[int] = CDNI_SYNTH_RANK
    forward_unlock: bool = False
    batch_size: int = 128
    synth_every: int = 1
    """The synthesizers update on every n-th step only (the seed gist's knob)."""
    update_prob: float = 1.0
    """Stochastic updates (paper section 3.1): each block updates at a step with this probability."""
    seed: int = 0
    device: str = "cpu"
    dry_run: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def use_context(self) -> bool:
        """cDNI: the synthesizers see the one-hot label."""
        return self.method == "cdni"


def classifier_config(**options: Any) -> ClassifierConfig:
    """A ``ClassifierConfig`` from flat options: ``TrainConfig`` fields go to ``train``, the others to the
    ``ClassifierConfig`` itself (so that command lines and benchmarks can name any of them alike)."""
    train_fields = {item.name for item in fields(TrainConfig)}
    train = TrainConfig(**{key: value for key, value in options.items() if key in train_fields})
    return ClassifierConfig(**{key: value for key, value in options.items() if key not in train_fields},
                            train=train)


def classifier_config_from_dict(data: dict[str, Any]) -> ClassifierConfig:
    """The inverse of ``asdict`` on a ``ClassifierConfig``, e.g. for a run's ``config.json``."""
    return ClassifierConfig(**{**data, "train": TrainConfig(**data["train"])})


def build_model(config: ClassifierConfig) -> DecoupledSequential:
    """The network that ``config.model`` and ``config.method`` name, for ``config.dataset``'s images."""
    if config.forward_unlock and config.model not in MLP_MODELS:
        raise InvalidConfig(f"{{0}} is available for the fully connected models {', '.join(MLP_MODELS)}, "
                            f"not {{1}} {config.model}", "forward_unlock", "model")
    in_channels, image_size, _ = IMAGE_SHAPES[config.dataset]
    synth_width = {} if config.synth_width is None else {"synth_width": config.synth_width}
    if config.model in MLP_MODELS:
        num_layers = config.layers if config.model == "mlp" else FCN_PRESETS[config.model]
        return build_mlp(config.method, in_features=in_channels * image_size * image_size,
                         num_classes=NUM_CLASSES, num_layers=num_layers, width=config.width,
                         synth_hidden_layers=config.synth_layers, synth_rank=config.synth_rank,
                         forward_unlock=config.forward_unlock, **synth_width)
    if config.model == "cnn":
        return build_cnn(config.method, in_channels=in_channels, image_size=image_size,
                         num_classes=NUM_CLASSES, synth_hidden_layers=config.synth_layers,
                         **synth_width)
    if config.model in CNN_PRESETS:
        num_conv = CNN_PRESETS[config.model]
        return build_cnn(config.method, in_channels=in_channels, image_size=image_size,
                         num_classes=NUM_CLASSES, channels=(PAPER_CNN_FILTERS,) * num_conv,
                         pools=("max3",) + ("avg3",) * (num_conv - 1), synth_hidden_layers=config.synth_layers,
                         **({"synth_width": PAPER_CNN_FILTERS} | synth_width))
    raise InvalidConfig(f"{{0}} must be one of {', '.join(MODELS)}, got {config.model!r}", "model")

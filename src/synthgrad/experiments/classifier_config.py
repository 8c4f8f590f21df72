"""What defines an image-classifier run: ``ClassifierConfig``, the defaults that depend on the model and the
method (each measured, see its docstring), and the network a configuration names."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from synthgrad.data import DATASET_NAMES, IMAGE_SHAPES
from synthgrad.decoupled import DecoupledSequential
from synthgrad.engine import TrainConfig
from synthgrad.errors import InvalidConfig
from synthgrad.experiments.image_models import (CNN_PRESETS, FCN_PRESETS, MLP_MODELS, MODELS, PAPER_CNN_FILTERS,
                                                build_cnn, build_mlp)

DATASETS = DATASET_NAMES
DRY_RUN_STEPS = 3
CDNI_SYNTH_RANK = 32
"""Rank of the default MLP's cDNI synthesizers (``None``: the paper's full linear map). Measured on the
default MLP after 10 epochs (``synthgrad bench methods --seeds 0 1 2``, benchmarks/results/mnist_methods.md):
98.49% test accuracy against the full map's 98.56%, the same cosine of ~0.7 at every cut, in 82% of its
training time."""
DNI_DECOUPLED_LR = 3e-5
"""Default learning rate of the blocks below the top cut under unconditioned DNI, on the MLPs and the
paper's CNNs (the top block keeps ``lr``; 3e-5 is also the paper's Adam rate). Those blocks follow
synthetic gradients that, for most of a short run, point nowhere in particular (README, *Why DNI lags*):
moving slowly limits the harm. Measured on the default MLP after 10 epochs (seed 0): 96.1% test accuracy
with 3e-5, 95.7% with 1e-4, 95.5% with 1e-5; with every block at 1e-3 it was at 88.4% after 2 epochs and
barely above training the output layer alone. On ``--model cnn4 --method dni`` after 1 epoch (seed 0):
test error 2.21% with 3e-5, 2.67% with 1e-4 (seed 1: 2.60%) and 3.99% at the full rate, which was worse
than leaving the lower blocks at initialisation (No Bprop: 3.85%; backprop 0.76%)."""


NUM_CLASSES = 10
"""Classes of every dataset here (MNIST, Fashion-MNIST, CIFAR-10)."""

PAPER_TRAINING = {"optimizer": "adam", "lr": 3e-5, "synth_lr": 3e-5, "batch_size": 256, "steps": 500_000,
                  "lr_schedule": "constant", "warmup_steps": 0}
"""The paper's optimisation for its feed-forward experiments (section 3.1): Adam at 3e-5, batch 256,
500k iterations. Our defaults (Adam 1e-3 with a cosine schedule, batch 128, 10 epochs) reach the same
accuracies in 1/100 of the steps on the MLPs, which is what a 2-core CPU allows."""

CONV_TRAINING = {"synth_lr": 1e-4, "warmup_steps": 50, "batch_size": 64}
"""Defaults of the CNNs (``cnn``, ``cnn3``, ``cnn4``), for every method (cDNI's synthesizers aside: see
``CONV_CDNI_SYNTH_LR``). A conv synthesizer's output layer
sums 5x5 x channels inputs, so Adam's first steps at 1e-3 make its outputs about 100 times the size of
its targets (synthesizer loss ~1000 after 20 steps), and the blocks below follow that noise. Measured on
``--model cnn --method cdni`` after 1 epoch (seed 0; backprop 98.68%): synthesizer lr 1e-3 95.74%,
1e-4 97.68%, 1e-3 with 50 warm-up steps 97.75%, 1e-4 with 50 warm-up steps 98.24%. On the paper's CNNs
(``bench table1``, 1 epoch) cDNI's test error went from 7.67% (cnn3) and 14.39% (cnn4) without them to
1.55% and 2.03%.

Batch 64: the CNN cells get one epoch, and a synthesizer learns per step, so twice the steps for the
same examples and compute let cDNI's synthesizers catch up. On an H100 (1 epoch, seeds 0 and 1,
``benchmarks/results/table1_mnist_cnn_batch_h100.md``) cDNI's gap to backprop at the same batch size
fell from 0.56 to 0.21 and 0.18 points on cnn3 and from 1.24 to 0.47 and 0.59 on cnn4; backprop itself
moved by at most 0.09 points. On the CPU (``bench table1``, medians of 3 seeds, with ``CONV_CDNI_SYNTH_LR``)
cDNI then trailed backprop by 0.25 (cnn3) and 0.42 points (cnn4)."""
CONV_CDNI_SYNTH_LR = 3e-4
"""cDNI's synthesizer learning rate on the CNNs (DNI keeps ``CONV_TRAINING``'s 1e-4). With the label planes
its targets are easier to fit, and a faster synthesizer serves the blocks below better within one epoch:
on an H100 at batch 64 (``benchmarks/results/table1_mnist_cnn_batch_h100.md``) cnn4's cDNI error over seeds
0, 1, 2 was 1.17, 1.24, 1.35 at 3e-4 against 1.26, 1.38, 1.58 at 1e-4 (backprop 0.79, 0.79, 0.82); cnn3's
was unchanged (1.16, 1.12 against 1.12, 1.19). DNI got worse at 3e-4 (cnn3 2.02% against 1.55%)."""


def training_defaults(model: str, method: str) -> dict[str, Any]:
    """Options (``ClassifierConfig`` or ``TrainConfig`` fields, see ``classifier_config``) whose defaults depend on the model and method: slower decoupled blocks for
    DNI (``DNI_DECOUPLED_LR``) but on the small ``cnn``, gentler synthesizer training for the CNNs
    (``CONV_TRAINING``, ``CONV_CDNI_SYNTH_LR``).

    On the small ``cnn`` (two conv blocks of 32 and 64 filters) DNI's blocks below the top cut
    learn best at the full rate: ``--model cnn --method dni`` after 1 epoch with the CNN defaults (seed 0)
    reached 98.41% test accuracy at 1e-3 and 97.88% at 3e-5."""
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

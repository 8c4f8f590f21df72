"""Image classifiers (MNIST, Fashion-MNIST, CIFAR-10) with every cut decoupled (paper section 3.1).

``method`` picks what sits at each cut: nothing (``backprop``), a synthesizer that sees only the
activation (``dni``), or one that also sees the one-hot label (``cdni``, the paper's conditional DNI);
``no-backprop`` trains the output layer alone, the paper's lower bound. ``model`` is a configurable
``mlp`` or small ``cnn``, or one of the paper's Table 1 presets (``fcn3``..``fcn6``, ``cnn3``, ``cnn4``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from synthgrad.data import DATASET_NAMES, IMAGE_SHAPES, DatasetError, load_dataset
from synthgrad.decoupled import DecoupledSequential
from synthgrad.errors import SynthgradError
from synthgrad.experiments.validation import validate_classifier_config
from synthgrad.metrics import CONFIG_FILE, SAMPLES_FILE, SUMMARY_FILE, write_json
from synthgrad.probe import gradient_snapshot
from synthgrad.synthesizers import ConvSynthesizer, InputSynthesizer, LinearSynthesizer, MLPSynthesizer, Synthesizer
from synthgrad.trainer import Split, TrainConfig, train

METHODS = ("backprop", "no-backprop", "dni", "cdni")
FCN_PRESETS = {"fcn3": 2, "fcn4": 3, "fcn5": 4, "fcn6": 5}
"""The paper's fully connected nets (Table 1) by name -> hidden layers: "N layers" counts the output layer."""
CNN_PRESETS = {"cnn3": 2, "cnn4": 3}
"""The paper's CNNs (Table 1) by name -> conv layers of ``PAPER_CNN_FILTERS`` 5x5 filters, the first
followed by 3x3 max-pooling and the others by 3x3 average-pooling, then the linear classifier."""
PAPER_CNN_FILTERS = 128
MLP_MODELS = ("mlp", *FCN_PRESETS)
MODELS = ("mlp", "cnn", *FCN_PRESETS, *CNN_PRESETS)
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
    """``TrainConfig`` fields whose defaults depend on the model and method: slower decoupled blocks for
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
    """Everything that defines an image-classifier run; written to ``config.json`` as resolved."""

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
    dry_run: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)


def classifier_config_from_dict(data: dict[str, Any]) -> ClassifierConfig:
    """The inverse of ``asdict`` on a ``ClassifierConfig``, e.g. for a run's ``config.json``."""
    return ClassifierConfig(**{**data, "train": TrainConfig(**data["train"])})


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _decoupled(
    method: str,
    blocks: list[nn.Module],
    synthesizer: Callable[[], Synthesizer],
    input_synthesizers: Optional[list[InputSynthesizer]] = None,
) -> DecoupledSequential:
    """The blocks with what ``method`` puts at each cut: ``synthesizer()`` for dni and cdni, nothing for
    backprop and no-backprop; no-backprop also freezes every block but the last, the paper's lower
    bound of a network whose layers below the output never learn."""
    _check_method(method)
    is_decoupled = method in ("dni", "cdni")
    model = DecoupledSequential(blocks, [synthesizer() if is_decoupled else None for _ in blocks[:-1]],
                                input_synthesizers=input_synthesizers)
    if method == "no-backprop":
        for block in model.blocks[:-1]:
            block.requires_grad_(False)
    return model


def build_mlp(
    method: str,
    *,
    in_features: int = 784,
    num_classes: int = 10,
    num_layers: int = 3,
    width: int = 256,
    synth_hidden_layers: int = 2,
    synth_width: int = 1024,
    synth_rank: Optional[int] = None,
    forward_unlock: bool = False,
) -> DecoupledSequential:
    """``num_layers`` hidden blocks Linear -> BatchNorm -> ReLU of ``width`` units, then a linear
    classifier, with a cut after every hidden block. Inputs ``(B, ...)`` are flattened first.

    DNI synthesizers are MLPs (``synth_hidden_layers`` of ``synth_width`` units) with BatchNorm: their
    targets shift as the network learns, and BatchNorm keeps the regression well conditioned (measured
    here: 89.5% instead of 81% test accuracy after 2 epochs). cDNI synthesizers are linear in
    [activation, one-hot label], as in the paper, factored through ``synth_rank`` dimensions when set.
    ``forward_unlock`` gives every block above the first an ``InputSynthesizer`` of its input from the
    network input (complete unlock, paper section 3.3).
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one hidden layer, got num_layers={num_layers}")
    blocks: list[nn.Module] = [nn.Sequential(nn.Flatten(), *_dense(in_features, width))]
    blocks += [nn.Sequential(*_dense(width, width)) for _ in range(num_layers - 1)]
    blocks.append(nn.Linear(width, num_classes))

    def synthesizer() -> Synthesizer:
        if method == "dni":
            return MLPSynthesizer(width, hidden_dim=synth_width, num_hidden_layers=synth_hidden_layers,
                                  batch_norm=True)
        return LinearSynthesizer(width, context_dim=num_classes, rank=synth_rank)

    input_synthesizers = [InputSynthesizer(in_features, width) for _ in range(num_layers)] if forward_unlock else None
    return _decoupled(method, blocks, synthesizer, input_synthesizers)


_POOLS: dict[str, tuple[type[nn.Module], int, int, int]] = {
    "max2": (nn.MaxPool2d, 2, 2, 0),
    "max3": (nn.MaxPool2d, 3, 2, 1),
    "avg3": (nn.AvgPool2d, 3, 2, 1),
}
"""Pooling after a conv block: (module, kernel, stride, padding). The 3x3 ones halve the resolution
(rounding up), as in the paper's CNNs."""


def build_cnn(
    method: str,
    *,
    in_channels: int = 1,
    image_size: int = 28,
    num_classes: int = 10,
    channels: tuple[int, ...] = (32, 64),
    pools: Optional[tuple[str, ...]] = None,
    synth_hidden_layers: int = 2,
    synth_width: int = 64,
) -> DecoupledSequential:
    """Conv blocks (5x5 resolution-preserving convolution -> BatchNorm -> ReLU -> pooling), one per
    entry of ``channels``, then a linear classifier, with a cut after every conv block.

    ``pools`` names each block's pooling (see ``_POOLS``; default 2x2 max-pooling everywhere).
    Synthesizers are convolutional (``synth_hidden_layers`` of ``synth_width`` 5x5 filters with
    BatchNorm and ReLU, then a 5x5 output convolution); the cDNI ones also see the one-hot label.
    """
    if not channels:
        raise ValueError("a CNN needs at least one conv block")
    pools = pools or ("max2",) * len(channels)
    if len(pools) != len(channels) or not set(pools) <= set(_POOLS):
        raise ValueError(f"pools must name one of {tuple(_POOLS)} per conv block, got {pools}")
    blocks: list[nn.Module] = []
    shapes: list[tuple[int, int, int]] = []  # (C, H, W) of each cut's activation
    width = in_channels
    for out_channels, pool in zip(channels, pools):
        module, kernel, stride, padding = _POOLS[pool]
        blocks.append(nn.Sequential(nn.Conv2d(width, out_channels, 5, padding=2), nn.BatchNorm2d(out_channels),
                                    nn.ReLU(), module(kernel, stride, padding)))
        width = out_channels
        image_size = (image_size + 2 * padding - kernel) // stride + 1
        shapes.append((out_channels, image_size, image_size))
    blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(width * image_size * image_size, num_classes)))
    cut_shapes = iter(shapes)

    def synthesizer() -> Synthesizer:
        channels_at_cut, height, width_at_cut = next(cut_shapes)
        return ConvSynthesizer(channels_at_cut, hidden_channels=synth_width, num_hidden_layers=synth_hidden_layers,
                               context_dim=num_classes if method == "cdni" else 0,
                               spatial_size=(height, width_at_cut))

    return _decoupled(method, blocks, synthesizer)


def _dense(in_features: int, out_features: int) -> list[nn.Module]:
    return [nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features), nn.ReLU()]


def build_model(config: ClassifierConfig) -> DecoupledSequential:
    """The network that ``config.model`` and ``config.method`` name, for ``config.dataset``'s images."""
    if config.forward_unlock and config.model not in MLP_MODELS:
        raise SynthgradError(f"--forward-unlock is available for the fully connected models {MLP_MODELS}, "
                             f"not --model {config.model}")
    in_channels, image_size, _ = IMAGE_SHAPES[config.dataset]
    synth_width = {} if config.synth_width is None else {"synth_width": config.synth_width}
    if config.model in MLP_MODELS:
        num_layers = config.layers if config.model == "mlp" else FCN_PRESETS[config.model]
        return build_mlp(config.method, in_features=in_channels * image_size * image_size,
                         num_classes=config.train.num_classes, num_layers=num_layers, width=config.width,
                         synth_hidden_layers=config.synth_layers, synth_rank=config.synth_rank,
                         forward_unlock=config.forward_unlock, **synth_width)
    if config.model == "cnn":
        return build_cnn(config.method, in_channels=in_channels, image_size=image_size,
                         num_classes=config.train.num_classes, synth_hidden_layers=config.synth_layers,
                         **synth_width)
    if config.model in CNN_PRESETS:
        num_conv = CNN_PRESETS[config.model]
        return build_cnn(config.method, in_channels=in_channels, image_size=image_size,
                         num_classes=config.train.num_classes, channels=(PAPER_CNN_FILTERS,) * num_conv,
                         pools=("max3",) + ("avg3",) * (num_conv - 1), synth_hidden_layers=config.synth_layers,
                         **({"synth_width": PAPER_CNN_FILTERS} | synth_width))
    raise ValueError(f"model must be one of {MODELS}, got {config.model!r}")


def load_splits(dataset: str, data_dir: str, *, download: bool, dry_run: bool) -> tuple[Split, Split, str]:
    """Train and test splits as float images ``(N, C, H, W)`` standardised per channel with the training
    set's mean and std, plus a note for the user (empty unless something unusual happened).

    A dry run never downloads: without readable local files it uses random stand-in images, and says so.
    """
    note = ""
    try:
        splits = load_dataset(dataset, data_dir, download=download and not dry_run)
        train_images, train_labels = splits.train_images, splits.train_labels
        test_images, test_labels = splits.test_images, splits.test_labels
    except DatasetError:
        if not dry_run:
            raise
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (384, *IMAGE_SHAPES[dataset]), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (384,), generator=generator)
        train_images, train_labels, test_images, test_labels = images[:256], labels[:256], images[256:], labels[256:]
        note = f"dry run: no readable {dataset} files in {data_dir}, using random stand-in images"
    shape = IMAGE_SHAPES[dataset]
    train_inputs = train_images.float().div_(255).view(-1, *shape)  # (N, C, H, W)
    test_inputs = test_images.float().div_(255).view(-1, *shape)
    mean = train_inputs.mean(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1)
    std = train_inputs.std(dim=(0, 2, 3), keepdim=True)
    return (Split((train_inputs - mean) / std, train_labels),
            Split((test_inputs - mean) / std, test_labels), note)


def run_experiment(
    config: ClassifierConfig,
    run_dir: Path,
    *,
    model_builder: Callable[[ClassifierConfig], DecoupledSequential] = build_model,
    on_record: Optional[Callable[[dict[str, Any]], None]] = None,
    on_note: Callable[[str], None] = print,
    resume: Optional[dict[str, Any]] = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Load the data, seed, build the model and train it, filling ``run_dir`` with ``config.json``,
    ``metrics.jsonl``, ``final.pt``, ``samples.pt`` (test digits with predictions, synthetic and true
    gradients at every cut) and ``summary.json``. Returns the summary.

    ``on_record`` sees every metrics record; ``on_note`` gets remarks for the user (e.g. that a dry
    run uses stand-in data); ``resume`` is a checkpoint of this run to continue from;
    ``stop_requested`` is asked after every step (see ``trainer.train``). An impossible ``config``
    raises ``InvalidConfig`` before anything is loaded or written."""
    validate_classifier_config(config, model_builder)
    train_split, test_split, note = load_splits(config.dataset, config.data_dir, download=config.download,
                                                dry_run=config.dry_run)
    if note:
        on_note(note)
    torch.manual_seed(config.train.seed)
    model = model_builder(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, asdict(config))
    if config.dry_run:
        train_split = Split(train_split.inputs[:1024], train_split.labels[:1024])
        test_split = Split(test_split.inputs[:512], test_split.labels[:512])
    summary = train(model, train_split, test_split, config.train, run_dir, on_record=on_record, resume=resume,
                    stop_requested=stop_requested)
    summary.update(method=config.method, model=config.model, dataset=config.dataset)
    torch.save(_samples(model, test_split, config.train), run_dir / SAMPLES_FILE)
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def _samples(model: DecoupledSequential, test_split: Split, config: TrainConfig, count: int = 12,
             gradient_batch: int = 32) -> dict[str, Any]:
    """What the figures show besides curves: ``count`` test images with the model's predictions, and
    one batch of ``gradient_batch`` examples' synthetic vs true gradients at each cut (as many as
    ``gradients.png`` shows; BatchNorm needs more than one)."""
    device = next(model.parameters()).device
    size = max(count, gradient_batch)
    inputs, labels = test_split.inputs[:size].to(device), test_split.labels[:size].to(device)
    context = nn.functional.one_hot(labels, config.num_classes).float() if config.use_context else None
    model.eval()
    with torch.no_grad():
        predictions = model(inputs[:count]).argmax(dim=1)
    model.train()
    pairs = gradient_snapshot(model, inputs, labels, context=context) if len(model.interfaces) else {}
    return {
        "images": inputs[:count].cpu(), "labels": labels[:count].cpu(), "predictions": predictions.cpu(),
        "cuts": list(pairs), "synthetic_grads": [synthetic for synthetic, _ in pairs.values()],
        "true_grads": [true for _, true in pairs.values()],
    }

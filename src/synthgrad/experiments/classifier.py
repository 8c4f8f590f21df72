"""Train an image classifier (MNIST, Fashion-MNIST, CIFAR-10) with every cut decoupled (paper section 3.1):
load and standardise the data, build the network its ``ClassifierConfig`` names, and run it on the engine
as a ``ClassificationTask``."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from synthgrad.data import IMAGE_SHAPES, load_dataset
from synthgrad.decoupled import DecoupledSequential
from synthgrad.engine import ClassificationTask, Split, train
from synthgrad.engine.records import CONFIG_FILE, write_json
from synthgrad.errors import DatasetError
from synthgrad.experiments.classifier_config import NUM_CLASSES, ClassifierConfig, build_model
from synthgrad.experiments.validation import validate_classifier_config


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
    stop_requested: Optional[Callable[[], bool]] = None,
) -> dict[str, Any]:
    """Load the data, seed, build the model and train it (``synthgrad.engine.train``), filling ``run_dir``
    with ``config.json``, ``metrics.jsonl``, ``final.pt``, ``samples.pt`` (test images with predictions,
    synthetic and true gradients at every cut) and ``summary.json``. Returns the summary.

    ``on_record`` sees every metrics record; ``on_note`` gets remarks for the user (e.g. that a dry
    run uses stand-in data); ``resume`` is a checkpoint of this run to continue from;
    ``stop_requested`` as in ``synthgrad.engine.train``. An impossible ``config`` raises ``InvalidConfig``
    before anything is loaded or written."""
    validate_classifier_config(config, model_builder)
    train_split, test_split, note = load_splits(config.dataset, config.data_dir, download=config.download,
                                                dry_run=config.dry_run)
    if note:
        on_note(note)
    torch.manual_seed(config.seed)
    model = model_builder(config).to(config.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, asdict(config))
    if config.dry_run:
        train_split = Split(train_split.inputs[:1024], train_split.labels[:1024])
        test_split = Split(test_split.inputs[:512], test_split.labels[:512])
    task = ClassificationTask(model, train_split, test_split, batch_size=config.batch_size,
                              use_context=config.use_context, num_classes=NUM_CLASSES,
                              synth_every=config.synth_every, update_prob=config.update_prob, seed=config.seed,
                              run_info={"method": config.method, "model": config.model, "dataset": config.dataset})
    return train(task, config.train, run_dir, on_record=on_record, resume=resume, stop_requested=stop_requested)

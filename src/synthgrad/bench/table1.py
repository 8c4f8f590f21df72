"""``synthgrad bench table1``: the DNI paper's Table 1 (feed-forward nets with every layer decoupled).

Jaderberg et al. 2017, section 3.1: fully connected nets of 3 to 6 layers and CNNs of 3 and 4 layers on
MNIST and CIFAR-10, each trained with backprop, without backprop below the output layer, with DNI and with
cDNI; the table reports test error %. Each cell is one run per seed in its own run directory
(``synthgrad.bench.cells``), so an interrupted grid resumes: finished cells are read back, a cell cut short
continues from its newest checkpoint.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from synthgrad.bench.cells import run_cells
from synthgrad.bench.report import check_choices, markdown_table, seeds_phrase, write_report
from synthgrad.errors import SynthgradError
from synthgrad.experiments.classifier_config import (
    DRY_RUN_STEPS,
    ClassifierConfig,
    classifier_config,
    training_defaults,
)
from synthgrad.experiments.image_models import CNN_PRESETS, FCN_PRESETS
from synthgrad.plots import plot_error_curves

TABLE1_MODELS = (*FCN_PRESETS, *CNN_PRESETS)
TABLE1_METHODS = ("backprop", "no-backprop", "dni", "cdni")
TABLE1_DATASETS = ("mnist", "cifar-10")
FCN_EPOCHS = 10
CNN_EPOCHS = 1
"""Default epochs per cell: the fully connected nets converge in 10 epochs here; the paper's CNNs (128
filters of 5x5 at full resolution, and synthesizers of the same size) cost far more per epoch on a CPU."""
METHOD_LABELS = {"backprop": "Bprop", "no-backprop": "No Bprop", "dni": "DNI", "cdni": "cDNI"}
DATASET_LABELS = {"mnist": "MNIST", "cifar-10": "CIFAR-10", "fashion-mnist": "Fashion-MNIST"}


def model_label(model: str) -> str:
    """The paper's row name, e.g. ``FCN 4 layers`` for ``fcn4``."""
    return f"{model[:3].upper()} {model[3:]} layers"


@dataclass
class Table1Config:
    """The grid (datasets x models x methods x seeds) and how to train each cell.

    ``data_dirs`` maps each dataset to its directory; ``epochs`` (``None``: ``FCN_EPOCHS`` for the fully
    connected nets, ``CNN_EPOCHS`` for the CNNs) applies to every cell.
    """

    data_dirs: dict[str, str]
    datasets: tuple[str, ...] = ("mnist",)
    models: tuple[str, ...] = TABLE1_MODELS
    methods: tuple[str, ...] = TABLE1_METHODS
    seeds: tuple[int, ...] = (0,)
    epochs: Optional[int] = None
    download: bool = True
    device: str = "cpu"
    dry_run: bool = False
    progress: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    """Extra options for every cell (``ClassifierConfig`` or ``TrainConfig`` fields, e.g. ``batch_size``)."""

    def __post_init__(self) -> None:
        for name, chosen, allowed in (("datasets", self.datasets, TABLE1_DATASETS + ("fashion-mnist",)),
                                      ("models", self.models, TABLE1_MODELS),
                                      ("methods", self.methods, TABLE1_METHODS)):
            check_choices(name, chosen, allowed)
        missing = [dataset for dataset in self.datasets if dataset not in self.data_dirs]
        if missing:
            raise SynthgradError(f"no data directory given for {', '.join(missing)}")

    def epochs_for(self, model: str) -> int:
        return self.epochs or (FCN_EPOCHS if model in FCN_PRESETS else CNN_EPOCHS)

    def cell_config(self, dataset: str, model: str, method: str, seed: int) -> ClassifierConfig:
        return classifier_config(**{
            "epochs": self.epochs_for(model), "steps": DRY_RUN_STEPS if self.dry_run else None,
            **training_defaults(model, method), "seed": seed, "device": self.device, "progress": False,
            "dataset": dataset, "data_dir": self.data_dirs[dataset], "download": self.download and not self.dry_run,
            "model": model, "method": method, "dry_run": self.dry_run, **self.overrides})


def run_table1(config: Table1Config, out_dir: Path, *, command: str,
               on_note: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every cell not finished yet under ``out_dir/<dataset>/<model>-<method>-seed<S>/``, then write
    ``results.json``, ``table1.md`` (headed by ``command``) and ``table1-<dataset>.png`` into ``out_dir``.
    Returns the results: per ``<dataset>/<model>/<method>`` the test error % of each seed, their median
    and the median minutes of training."""
    cells = [(dataset, model, method, seed) for dataset in config.datasets for model in config.models
             for method in config.methods for seed in config.seeds]
    summaries = run_cells(cells, config.cell_config, lambda *cell: _cell_dir(out_dir, *cell), on_note=on_note,
                          progress=config.progress)

    results: dict[str, Any] = {"cells": {}}
    for dataset in config.datasets:
        for model in config.models:
            for method in config.methods:
                runs = [summaries[(dataset, model, method, seed)] for seed in config.seeds]
                errors = [100.0 * (1.0 - run["test_acc"]) for run in runs]
                results["cells"][f"{dataset}/{model}/{method}"] = {
                    "test_errors": errors, "test_error": statistics.median(errors),
                    "train_minutes": statistics.median(run["train_seconds"] / 60 for run in runs),
                    "epochs": runs[0]["epochs"],
                }
    sections = [_tables(config, results["cells"], dataset) for dataset in config.datasets]
    for dataset in config.datasets:
        plot_error_curves(
            {model_label(model): {METHOD_LABELS[method]: [_cell_dir(out_dir, dataset, model, method, seed)
                                                          for seed in config.seeds]
                                  for method in config.methods}
             for model in config.models},
            title=f"{DATASET_LABELS[dataset]}: error against steps", path=out_dir / f"table1-{dataset}.png")
    write_report(out_dir, "table1", command, results, sections)
    return results


def _cell_dir(out_dir: Path, dataset: str, model: str, method: str, seed: int) -> Path:
    return out_dir / dataset / f"{model}-{method}-seed{seed}"


def _tables(config: Table1Config, cells: dict[str, Any], dataset: str) -> str:
    """The paper's layout for one dataset: test error % per model and method, then training minutes."""
    header = ["", *(METHOD_LABELS[method] for method in config.methods)]
    errors, minutes = [], []
    for model in config.models:
        row = [cells[f"{dataset}/{model}/{method}"] for method in config.methods]
        epochs = row[0]["epochs"]
        label = f"{model_label(model)} ({epochs:g} epoch{'' if epochs == 1 else 's'})"
        errors.append([label, *(f"{cell['test_error']:.2f}" for cell in row)])
        minutes.append([label, *(f"{cell['train_minutes']:.1f}" for cell in row)])
    return "\n".join([
        f"**{DATASET_LABELS[dataset]}**, test error % ({seeds_phrase(config.seeds)}):",
        "", markdown_table(header, errors),
        "Minutes of training per run (optimisation only):", "", markdown_table(header, minutes),
    ])

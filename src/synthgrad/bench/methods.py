"""``synthgrad bench methods``: backprop, DNI and cDNI on the default MNIST MLP (``ClassifierConfig()``:
3 hidden layers of 256 units, a cut after each), every cut decoupled (paper section 3.1).

Per variant, the median over seeds of the final and best test accuracy, of the seconds per epoch of
optimisation (no data loading, no evaluation; also as a multiple of backprop's, which therefore always
runs) and of the final synthetic-gradient cosine at each cut. The variants are the methods with their
defaults, plus cDNI with the paper's full linear synthesizer instead of the default rank-32 one.

Writes into ``out_dir``: one run directory per cell, ``<variant>-seed<S>/`` (resumable, see
``synthgrad.bench.cells``), and through ``synthgrad.bench.report`` ``results.json`` and ``methods.md``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from synthgrad.bench.cells import run_cells
from synthgrad.bench.report import check_choices, markdown_table, seed_medians, seeds_phrase, write_report
from synthgrad.experiments.classifier_config import (
    DRY_RUN_STEPS,
    ClassifierConfig,
    classifier_config,
    training_defaults,
)

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "backprop": ("backprop", {}),
    "dni": ("dni", {}),
    "cdni": ("cdni", {}),
    "cdni-full-rank": ("cdni", {"synth_rank": None}),
}
"""Variant name -> (method, ``ClassifierConfig`` overrides), in table order."""
VARIANT_LABELS = {"cdni-full-rank": "cdni, full-rank synthesizer"}
TIME_REFERENCE = "backprop"


@dataclass
class MethodsBenchConfig:
    """The cells (variants x seeds) and how long each trains. ``variants`` always includes
    ``TIME_REFERENCE`` and follows the order of ``VARIANTS``, whatever order it was given in."""

    data_dir: str = ""
    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: tuple[int, ...] = (0,)
    epochs: int = 10
    batch_size: int = ClassifierConfig.batch_size
    dry_run: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_choices("variants", self.variants, tuple(VARIANTS))
        self.variants = tuple(name for name in VARIANTS if name == TIME_REFERENCE or name in self.variants)

    def cell_config(self, variant: str, seed: int) -> ClassifierConfig:
        method, overrides = VARIANTS[variant]
        return classifier_config(epochs=self.epochs, seed=seed, progress=False,
                                 steps=DRY_RUN_STEPS if self.dry_run else None,
                                 **{**training_defaults("mlp", method), "batch_size": self.batch_size},
                                 method=method, data_dir=self.data_dir, download=not self.dry_run,
                                 dry_run=self.dry_run, **overrides)


def run_methods(config: MethodsBenchConfig, out_dir: Path, *, command: str = "synthgrad bench methods",
                on_note: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every cell not finished yet (every variant once per seed, so that all see the same machine
    conditions), then write ``results.json`` and ``methods.md`` (headed by ``command``) into ``out_dir``.
    Returns the results: per variant, each seed's and the median accuracies, seconds per epoch and cosines."""
    out_dir = Path(out_dir)
    cells = [(variant, seed) for seed in config.seeds for variant in config.variants]
    summaries = run_cells(cells, config.cell_config, lambda variant, seed: out_dir / f"{variant}-seed{seed}",
                          on_note=on_note, progress=config.progress)
    variants = {}
    for variant in config.variants:
        runs = [summaries[(variant, seed)] for seed in config.seeds]
        runs = [{**run, "seconds_per_epoch": run["train_seconds"] / run["epochs"]} for run in runs]
        cosines = [key for key in runs[0] if key.startswith("sg/cos/")]
        variants[variant] = seed_medians(runs, ("test_acc", "best_test_acc", "seconds_per_epoch", *cosines))
        variants[variant]["cosines"] = cosines
    reference = variants[TIME_REFERENCE]["seconds_per_epoch_median"]
    rows = []
    for variant, row in variants.items():
        seconds = row["seconds_per_epoch_median"]
        rows.append([VARIANT_LABELS.get(variant, variant), f"{100 * row['test_acc_median']:.2f}",
                     f"{100 * row['best_test_acc_median']:.2f}", f"{seconds:.2f} ({seconds / reference:.2f}x)",
                     ", ".join(f"{row[key + '_median']:.2f}" for key in row["cosines"]) or "–"])
    table = markdown_table(["method", "final test acc %", "best test acc %", f"s / epoch (vs {TIME_REFERENCE})",
                            "final cosine per cut (bottom first)"], rows)
    threads = torch.get_num_threads()  # the seconds depend on it; the command line does not show it
    results = {"command": command, "config": asdict(config), "threads": threads, "variants": variants}
    heading = f"MNIST MLP, {seeds_phrase(config.seeds)}; {threads} torch thread{'s' if threads > 1 else ''} per run."
    write_report(out_dir, "methods", command, results, [heading, table])
    return results

"""``synthgrad bench gist``: the seed gist's experiment, corrected (``synthgrad.experiments.gist``), over
seeds: test accuracy after its 1000 iterations and seconds of training, for backprop (the same 784-100-10
network without a cut), DNI and cDNI.

Writes into ``out_dir``: one run directory per cell, ``<method>-seed<S>/`` (resumable, see
``synthgrad.bench.cells``), and through ``synthgrad.bench.report`` ``results.json`` and ``gist.md`` (the
command, then the median over seeds of the final test accuracy and of the training seconds).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from synthgrad.bench.cells import run_cells
from synthgrad.bench.report import check_choices, markdown_table, seed_medians, write_report
from synthgrad.experiments.classifier_config import DRY_RUN_STEPS, ClassifierConfig
from synthgrad.experiments.gist import build_gist_model, gist_config

GIST_METHODS = ("backprop", "dni", "cdni")


@dataclass
class GistBenchConfig:
    """The cells (methods x seeds) and where MNIST is; every cell is ``gist_config(method, seed=seed)``."""

    data_dir: str = ""
    methods: tuple[str, ...] = GIST_METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    dry_run: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_choices("methods", self.methods, GIST_METHODS)

    def cell_config(self, method: str, seed: int) -> ClassifierConfig:
        return gist_config(method, seed=seed, progress=False, data_dir=self.data_dir, dry_run=self.dry_run,
                           **({"steps": DRY_RUN_STEPS} if self.dry_run else {}))


def run_gist(config: GistBenchConfig, out_dir: Path, *, command: str = "synthgrad bench gist",
             on_note: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every cell not finished yet, then write ``results.json`` and ``gist.md`` (headed by ``command``)
    into ``out_dir``. Returns the results: per method, each seed's and the median test accuracy and
    training seconds."""
    out_dir = Path(out_dir)
    cells = [(method, seed) for method in config.methods for seed in config.seeds]
    summaries = run_cells(cells, config.cell_config, lambda method, seed: out_dir / f"{method}-seed{seed}",
                          model_builder=build_gist_model, on_note=on_note, progress=config.progress)
    methods = {method: seed_medians([summaries[(method, seed)] for seed in config.seeds], ("test_acc", "train_seconds"))
               for method in config.methods}
    rows = [[method, " ".join(f"{acc:.3f}" for acc in row["test_acc"]), f"{row['test_acc_median']:.3f}",
             f"{row['train_seconds_median']:.2f}"] for method, row in methods.items()]
    table = markdown_table(["method", "test accuracy per seed", "median", "training seconds (median)"], rows)
    results = {"command": command, "config": asdict(config), "methods": methods}
    write_report(out_dir, "gist", command, results, [table])
    return results

"""The cells of a classifier benchmark: one ``run_experiment`` each, in its own run directory, so that a
grid interrupted at any point resumes. A finished cell is read back, a cell cut short continues from its
newest checkpoint, and a cell whose directory holds a run of other options (the bench was rerun into the
same ``--out`` with, say, another ``--batch-size``) starts over."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Hashable, Optional, Sequence

from tqdm.auto import tqdm

from synthgrad.checkpoints import load_latest_checkpoint
from synthgrad.decoupled import DecoupledSequential
from synthgrad.engine.records import CONFIG_FILE, SUMMARY_FILE, clear_run_files, read_json
from synthgrad.experiments.classifier import run_experiment
from synthgrad.experiments.classifier_config import ClassifierConfig, build_model, classifier_config_from_dict

Cell = tuple[Hashable, ...]
"""A cell's coordinates in the grid, its seed last, e.g. ``("mnist", "fcn3", "cdni", 0)``."""


def saved_config(run_dir: Path) -> Optional[ClassifierConfig]:
    """The configuration of the run in ``run_dir`` (fields added to the config since it ran take their
    defaults), or ``None`` when there is none or it is unreadable."""
    try:
        return classifier_config_from_dict(json.loads((run_dir / CONFIG_FILE).read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def run_cell(config: ClassifierConfig, run_dir: Path, *,
             model_builder: Callable[[ClassifierConfig], DecoupledSequential] = build_model,
             on_note: Callable[[str], None] = print) -> dict[str, Any]:
    """The summary of ``config``'s run in ``run_dir``: read back when finished there, else trained now
    (continued from the newest checkpoint of the same configuration, if any)."""
    is_same = saved_config(run_dir) == config
    if is_same and (run_dir / SUMMARY_FILE).is_file():
        return read_json(run_dir / SUMMARY_FILE)
    resume = load_latest_checkpoint(run_dir) if is_same else None
    if resume is None and run_dir.is_dir():
        clear_run_files(run_dir)  # cut short before its first checkpoint, or another configuration's run
    return run_experiment(config, run_dir, model_builder=model_builder, on_note=on_note, resume=resume)


def run_cells(cells: Sequence[Cell], configure: Callable[..., ClassifierConfig], cell_dir: Callable[..., Path], *,
              model_builder: Callable[[ClassifierConfig], DecoupledSequential] = build_model,
              on_note: Callable[[str], None] = print, progress: bool = True) -> dict[Cell, dict[str, Any]]:
    """``run_cell(configure(*cell), cell_dir(*cell))`` for every cell in order, under a progress bar;
    returns each cell's summary."""
    summaries: dict[Cell, dict[str, Any]] = {}
    bar = tqdm(cells, unit="cell", disable=not progress, dynamic_ncols=True)
    for cell in bar:
        bar.set_description(" ".join(map(str, cell[:-1])) + f" seed {cell[-1]}")
        summaries[cell] = run_cell(configure(*cell), cell_dir(*cell), model_builder=model_builder, on_note=on_note)
    bar.close()
    return summaries

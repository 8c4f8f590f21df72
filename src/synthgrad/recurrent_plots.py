"""Figures of recurrent runs (``synthgrad rnn``, ``synthgrad bench rnn``); like ``synthgrad.plots``, the
only other module that imports matplotlib.

``curriculum.png``: the curriculum's length and the training error (bits per character) per step of a
Copy / Repeat Copy run, and with a synthesizer its cosine to its target and to the true future gradient.
``bpc.png``: training and validation bits per character against characters seen for a language-model
run. ``plot_bpc_curves`` draws several language-model runs on one figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from synthgrad.errors import SynthgradError  # noqa: E402
from synthgrad.engine.records import METRICS_FILE, read_metrics  # noqa: E402


def _records(run_dir: Path) -> list[dict]:
    if not (Path(run_dir) / METRICS_FILE).is_file():
        raise SynthgradError(f"{run_dir} has no {METRICS_FILE}: pass the directory of a synthgrad rnn run")
    return read_metrics(run_dir)


def _column(records: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    points = [(record[x], record[y]) for record in records if y in record]
    return [point[0] for point in points], [point[1] for point in points]


def plot_rnn_run(run_dir: Path) -> list[Path]:
    """Draw the run's figure (``curriculum.png`` or ``bpc.png``); returns the paths written."""
    run_dir = Path(run_dir)
    records = _records(run_dir)
    if not records:
        return []
    if "chars_seen" in records[0]:  # a language model's
        return [plot_bpc_curves({"": [run_dir]}, run_dir / "bpc.png", show_train=True)]
    cosine_labels = {"sg/cos/state": "to its bootstrapped target", "sg/cos_true/state": "to the true future gradient"}
    cosines = {key: label for key, label in cosine_labels.items() if any(key in record for record in records)}
    figure, panels = plt.subplots(1, 2 if cosines else 1, figsize=(11 if cosines else 6, 4), squeeze=False)
    length_axes = panels[0, 0]
    length_axes.plot(*_column(records, "step", "length"), color="C0")
    length_axes.set(title="Curriculum", xlabel="training step", ylabel="sequence length", )
    error_axes = length_axes.twinx()
    error_axes.plot(*_column(records, "step", "train/bpc"), color="C1", alpha=0.6)
    error_axes.set(ylabel="error (bits per character)", yscale="log")
    if cosines:  # how much of the future the synthesizer predicts, next to what it is trained on
        cosine_axes = panels[0, 1]
        for key, label in cosines.items():
            cosine_axes.plot(*_column(records, "step", key), label=label)
        cosine_axes.axhline(0.0, color="grey", linewidth=0.8)
        cosine_axes.set(title="Synthetic gradient: cosine", xlabel="training step", ylabel="cosine")
        cosine_axes.legend()
    return [_save(figure, run_dir / "curriculum.png")]


def plot_bpc_curves(runs: Mapping[str, Sequence[Path]], path: Path, *, show_train: bool = False) -> Path:
    """Validation bits per character against characters seen, one colour per ``label: [run_dir, ...]``
    (a line per run, e.g. per seed: the spread between seeds stays visible)."""
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    for index, (label, run_dirs) in enumerate(runs.items()):
        for seed, run_dir in enumerate(run_dirs):
            records = _records(run_dir)
            axes.plot(*_column(records, "chars_seen", "val/bpc"), "o-", markersize=3, color=f"C{index}",
                      label=f"{label} validation".strip() if seed == 0 else None)
            if show_train:
                axes.plot(*_column(records, "chars_seen", "train/bpc"), color=f"C{index}", alpha=0.4,
                          label=f"{label} train".strip() if seed == 0 else None)
    axes.set(title="Character-level language model", xlabel="characters seen", ylabel="bits per character")
    axes.legend()
    return _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path

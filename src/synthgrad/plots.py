"""Figures from a run directory; the only module that imports matplotlib.

Reads ``metrics.jsonl`` (and ``samples.pt`` when present) and writes PNG files beside them:
``loss.png`` (raw and smoothed training loss, test loss), ``accuracy.png``, ``synthetic_gradients.png``
(per cut: cosine between synthetic and target gradient, and at evaluations to the true gradient; and
synthesizer loss), ``gradients.png``
(true vs synthetic gradient at each cut for one test batch) and ``predictions.png`` (test digits with
the model's predictions). The last two are the seed gist's figures, with its bug fixed: the gist drew
the true gradient in both panels. The benchmarks' figures of several runs on shared axes are drawn here
too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from synthgrad.engine.records import METRICS_FILE, SAMPLES_FILE, read_metrics  # noqa: E402
from synthgrad.errors import SynthgradError  # noqa: E402

MAX_UNITS_SHOWN = 50
MAX_EXAMPLES_SHOWN = 32

LOSS_SMOOTHING = 0.95
"""Exponential smoothing of loss curves, the seed gist's factor."""


def smooth(values: Iterable[float], factor: float = LOSS_SMOOTHING) -> list[float]:
    """Exponential moving average started at the first value, as the seed gist smoothed its loss."""
    smoothed: list[float] = []
    for value in values:
        smoothed.append(value if not smoothed else factor * smoothed[-1] + (1 - factor) * value)
    return smoothed


def plot_run(run_dir: Path) -> list[Path]:
    """Draw every figure the run directory has data for; returns the PNG paths written."""
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise SynthgradError(f"{run_dir} has no {METRICS_FILE}: pass the run directory a synthgrad run wrote")
    records = read_metrics(run_dir)
    if not records:
        raise SynthgradError(f"{run_dir / METRICS_FILE} is empty: the run wrote no metrics yet")
    written = [_plot_loss(records, run_dir / "loss.png"), _plot_accuracy(records, run_dir / "accuracy.png")]
    cuts = list(dict.fromkeys(key.removeprefix("sg/cos/") for record in records for key in record
                              if key.startswith("sg/cos/")))
    if cuts:
        written.append(_plot_synthetic_gradients(records, cuts, run_dir / "synthetic_gradients.png"))
    if (run_dir / SAMPLES_FILE).is_file():
        samples = torch.load(run_dir / SAMPLES_FILE)
        if samples["synthetic_grads"]:
            written.append(_plot_gradients(samples, run_dir / "gradients.png"))
        written.append(_plot_predictions(samples, run_dir / "predictions.png"))
    return written


def plot_error_curves(curves: dict[str, dict[str, list[Path]]], *, title: str, path: Path) -> Path:
    """One panel per entry of ``curves`` (e.g. per model), each with error % against training step for every
    method on the same axes: test error at each evaluation (points) and the training error of each logged
    interval's batches (dashed), which shows how a run got there even where it was evaluated only once (the
    one-epoch CNN cells). ``curves[panel][method]`` lists run directories (one per seed, drawn in the
    method's colour). Runs without metrics yet are skipped."""
    panels = list(curves)
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for axis, panel in zip(axes.flat, panels):
        test_errors: list[float] = []
        for color, (method, run_dirs) in enumerate(curves[panel].items()):
            for seed, run_dir in enumerate(run_dirs):
                if not (Path(run_dir) / METRICS_FILE).is_file():
                    continue
                records = read_metrics(run_dir)
                steps, accuracies = _series(records, "train/acc")
                axis.plot(steps, [100 * (1 - acc) for acc in accuracies], "--", linewidth=1,
                          alpha=0.6, color=f"C{color}")
                steps, accuracies = _series(records, "test/acc")
                errors = [100 * (1 - acc) for acc in accuracies]
                test_errors += errors
                axis.plot(steps, errors, "o-", markersize=3, color=f"C{color}", label=method if seed == 0 else None)
        axis.set(title=panel, xlabel="training step", ylabel="error % (test: points; training: dashed)",
                 yscale="log")
        if min(test_errors, default=0) > 0:  # a training error that falls towards 0 runs off the bottom
            axis.set_ylim(bottom=min(test_errors) / 2)
        axis.legend()
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.suptitle(title)
    return _save(figure, path)


def plot_accuracy_against_seconds(timelines: dict[str, list[tuple[float, float]]], *, target: float, title: str,
                                  path: Path) -> Path:
    """Test accuracy % against seconds of training, one line per entry of ``timelines`` (``(seconds,
    accuracy)`` at every evaluation), with the ``target`` accuracy drawn across: which run gets there
    first, and how far each gets in the same time, at a glance."""
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for name, timeline in timelines.items():
        axis.plot([seconds for seconds, _ in timeline], [100 * acc for _, acc in timeline], "o-", markersize=3,
                  label=name)
    axis.axhline(100 * target, color="grey", linestyle=":", label=f"{100 * target:g}%")
    finals = [100 * acc for timeline in timelines.values() for _, acc in timeline[len(timeline) // 2:]]
    if finals:  # zoom on the second half of training, where the runs are told apart
        axis.set_ylim(min(min(finals), 100 * target) - 1, max(finals) + 0.3)
    axis.set(title=title, xlabel="seconds of training", ylabel="test accuracy %")
    axis.legend()
    return _save(figure, path)


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(record["step"], record[key]) for record in records if key in record]
    return [step for step, _ in points], [value for _, value in points]


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _plot_loss(records: list[dict], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 4))
    steps, losses = _series(records, "train/loss")
    axes.plot(steps, losses, alpha=0.3, color="C0", label="train (raw)")
    axes.plot(steps, smooth(losses), color="C0", label="train (smoothed)")
    steps, losses = _series(records, "test/loss")
    axes.plot(steps, losses, "o-", color="C1", label="test")
    axes.set(title="Loss", xlabel="training step", ylabel="cross-entropy")
    axes.legend()
    return _save(figure, path)


def _plot_accuracy(records: list[dict], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 4))
    for key, style in (("train/acc", "-"), ("test/acc", "o-")):
        steps, values = _series(records, key)
        axes.plot(steps, values, style, label=key.split("/")[0])
    axes.set(title="Accuracy", xlabel="training step", ylabel="accuracy")
    axes.legend()
    return _save(figure, path)


def _plot_synthetic_gradients(records: list[dict], cuts: list[str], path: Path) -> Path:
    figure, (cosine_axes, loss_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for index, cut in enumerate(cuts):
        color = f"C{index}"
        cosine_axes.plot(*_series(records, f"sg/cos/{cut}"), color=color, label=f"cut {cut}")
        # at evaluations: how much of the true gradient the cut passes on (its target is bootstrapped below the top)
        cosine_axes.plot(*_series(records, f"sg/cos_true/{cut}"), "o--", markersize=3, color=color)
        loss_axes.plot(*_series(records, f"sg/loss/{cut}"), color=color, label=f"cut {cut}")
    cosine_axes.axhline(0.0, color="grey", linewidth=0.8)
    cosine_axes.set(title="Synthetic gradient: cosine to its target (dashed: to the true gradient)",
                    xlabel="training step", ylabel="cosine")
    loss_axes.set(title="Synthesizer loss", xlabel="training step", ylabel="L2 loss", yscale="log")
    cosine_axes.legend()
    loss_axes.legend()
    return _save(figure, path)


def _plot_gradients(samples: dict, path: Path) -> Path:
    pairs = list(zip(samples["true_grads"], samples["synthetic_grads"]))
    figure, axes = plt.subplots(len(pairs), 2, figsize=(10, 2.8 * len(pairs)), squeeze=False,
                                layout="constrained")
    for row, (name, (true_grad, synthetic_grad)) in enumerate(zip(samples["cuts"], pairs)):
        true_grad = true_grad.flatten(1)[:MAX_EXAMPLES_SHOWN, :MAX_UNITS_SHOWN]  # (examples, units) shown
        synthetic_grad = synthetic_grad.flatten(1)[:MAX_EXAMPLES_SHOWN, :MAX_UNITS_SHOWN]
        limit = max(true_grad.abs().max().item(), synthetic_grad.abs().max().item(), 1e-12)
        for column, (title, grad) in enumerate((("True", true_grad), ("Synthetic", synthetic_grad))):
            image = axes[row, column].imshow(grad.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
            axes[row, column].set(title=f"{title} gradient B·dL/dh, cut {name}", xlabel="unit", ylabel="example")
        figure.colorbar(image, ax=axes[row].tolist(), shrink=0.9)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _displayable(image: torch.Tensor) -> np.ndarray:
    """A standardised image ``(C, H, W)`` as imshow wants it: ``(H, W)`` grey, or ``(H, W, 3)`` colour in [0, 1]."""
    if image.shape[0] == 1:
        return image[0].numpy()
    low, high = image.min(), image.max()
    return ((image - low) / (high - low).clamp_min(1e-12)).permute(1, 2, 0).numpy()


def _plot_predictions(samples: dict, path: Path) -> Path:
    images, labels, predictions = samples["images"], samples["labels"], samples["predictions"]
    columns = 6
    rows = (len(images) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 2.0 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            axis.imshow(_displayable(images[index]), cmap="gray")
            is_right = predictions[index] == labels[index]
            axis.set_title(f"predicted: {predictions[index].item()}", color="black" if is_right else "red", fontsize=9)
    return _save(figure, path)

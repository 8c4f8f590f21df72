"""Tests for synthgrad.plots (figures from a run directory) and synthgrad.metrics.smooth.

Run directories are written by hand here, record by record, so each figure's trigger is explicit:
curves always, ``synthetic_gradients.png`` when records carry ``sg/*`` keys, ``predictions.png`` when
``samples.pt`` exists, and ``gradients.png`` when the samples hold synthetic gradients.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthgrad.engine.records import read_metrics
from synthgrad.errors import SynthgradError
from synthgrad.plots import LOSS_SMOOTHING, plot_run, smooth

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _records(cuts: list[int], steps: int = 6) -> list[dict]:
    """Metrics as the engine writes them: every step logged, test metrics every third step."""
    records = []
    for step in range(1, steps + 1):
        record = {"step": step, "epoch": step / 3, "train/loss": 2.3 / step, "train/acc": 0.1 * step}
        for cut in cuts:
            record[f"sg/loss/{cut}"] = 1.0 / step
            record[f"sg/cos/{cut}"] = 0.1 * step
        if step % 3 == 0:
            record.update({"test/loss": 2.0 / step, "test/acc": 0.12 * step})
        records.append(record)
    return records


def _samples(activation_shapes: list[tuple[int, ...]], count: int = 12) -> dict:
    """Shaped like ``ClassificationTask.samples``: ``count`` test images with labels and predictions,
    and one batch's (synthetic, true) gradient per cut; no cuts for backprop."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (count,), generator=generator)
    predictions = labels.clone()
    predictions[::3] = (labels[::3] + 1) % 10  # some wrong predictions, drawn in red
    return {
        "images": torch.randn(count, 1, 28, 28, generator=generator),
        "labels": labels,
        "predictions": predictions,
        "cuts": [str(index) for index in range(len(activation_shapes))],
        "synthetic_grads": [torch.randn(shape, generator=generator) for shape in activation_shapes],
        "true_grads": [torch.randn(shape, generator=generator) for shape in activation_shapes],
    }


def _write_run(run_dir: Path, records: list[dict], samples: dict | None = None) -> Path:
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    if samples is not None:
        torch.save(samples, run_dir / "samples.pt")
    return run_dir


CURVES = ["loss.png", "accuracy.png"]
CASES = {
    "backprop, no samples": ([], None, CURVES),
    "decoupled, no samples": ([0, 2], None, CURVES + ["synthetic_gradients.png"]),
    "backprop with samples": ([], [], CURVES + ["predictions.png"]),
    "mlp cuts with samples": ([0, 1, 2], [(96, 256)] * 3,
                              CURVES + ["synthetic_gradients.png", "gradients.png", "predictions.png"]),
    "cnn cuts with samples": ([0, 1], [(96, 32, 14, 14), (96, 64, 7, 7)],
                              CURVES + ["synthetic_gradients.png", "gradients.png", "predictions.png"]),
}


@pytest.mark.parametrize("cuts, sample_shapes, expected", CASES.values(), ids=CASES.keys())
def test_plot_run_writes_exactly_the_figures_it_has_data_for(tmp_path, cuts, sample_shapes, expected):
    samples = None if sample_shapes is None else _samples(sample_shapes)
    run_dir = _write_run(tmp_path / "run", _records(cuts), samples)

    written = plot_run(run_dir)

    assert written == [run_dir / name for name in expected]
    assert sorted(path.name for path in run_dir.glob("*.png")) == sorted(expected)
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, path.name


def _gradients_png(run_dir: Path, synthetic_sign: float) -> bytes:
    samples = _samples([(96, 64)])
    samples["synthetic_grads"] = [synthetic_sign * true for true in samples["true_grads"]]  # same colour scale
    _write_run(run_dir, _records([0]), samples)
    plot_run(run_dir)
    return (run_dir / "gradients.png").read_bytes()


def test_gradients_figure_draws_the_synthetic_gradient(tmp_path):
    """The seed gist drew the true gradient in both panels. Flipping the synthetic gradient's sign
    (which keeps the colour scale) must change the figure; drawing the same data twice must not."""
    same = _gradients_png(tmp_path / "a", 1.0)
    assert _gradients_png(tmp_path / "b", 1.0) == same  # rendering is deterministic
    assert _gradients_png(tmp_path / "c", -1.0) != same


def test_plot_run_overwrites_previous_figures(tmp_path):
    run_dir = _write_run(tmp_path / "run", _records([0]))
    (run_dir / "loss.png").write_bytes(b"stale")
    plot_run(run_dir)
    assert (run_dir / "loss.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_run_accepts_a_string_path(tmp_path):
    run_dir = _write_run(tmp_path / "run", _records([]))
    assert [path.name for path in plot_run(str(run_dir))] == CURVES


def test_missing_metrics_names_the_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(SynthgradError, match="metrics.jsonl") as raised:
        plot_run(run_dir)
    assert str(run_dir) in str(raised.value)
    assert list(run_dir.iterdir()) == []


def test_missing_directory_names_it(tmp_path):
    with pytest.raises(SynthgradError, match="metrics.jsonl") as raised:
        plot_run(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(raised.value)


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank lines"])
def test_empty_metrics_names_the_file(tmp_path, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(content)
    with pytest.raises(SynthgradError, match="empty") as raised:
        plot_run(run_dir)
    assert str(run_dir / "metrics.jsonl") in str(raised.value)
    assert not list(run_dir.glob("*.png"))


def test_half_written_last_line_is_left_out(tmp_path):
    run_dir = _write_run(tmp_path / "run", _records([0]))
    with (run_dir / "metrics.jsonl").open("a") as file:
        file.write('{"step": 7, "train/lo')  # the process died mid-write
    assert [record["step"] for record in read_metrics(run_dir)] == [record["step"] for record in _records([0])]
    assert plot_run(run_dir)


def test_damaged_metrics_names_the_file_and_line(tmp_path):
    records = _records([0])
    run_dir = _write_run(tmp_path / "run", records)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, '{"step": 7, "train/lo')
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SynthgradError, match=r"metrics.jsonl line 2 is not valid JSON"):
        plot_run(run_dir)


# ----------------------------------------------------------------------------------------- smooth


def test_smooth_is_the_gist_ema_started_at_the_first_value():
    values = [4.0, 2.0, 0.0, 8.0]
    factor = LOSS_SMOOTHING  # 0.95
    first = 4.0
    second = 0.95 * first + 0.05 * 2.0  # 3.9
    third = 0.95 * second + 0.05 * 0.0  # 3.705
    fourth = 0.95 * third + 0.05 * 8.0  # 3.91975
    assert factor == 0.95
    assert smooth(values) == pytest.approx([first, second, third, fourth])
    assert smooth(values)[-1] == pytest.approx(3.91975)


def test_smooth_with_a_given_factor():
    assert smooth([1.0, 2.0, 3.0], factor=0.5) == pytest.approx([1.0, 1.5, 2.25])
    assert smooth([1.0, 2.0, 3.0], factor=0.0) == pytest.approx([1.0, 2.0, 3.0])  # no smoothing
    assert smooth(iter([5.0, 1.0]), factor=1.0) == pytest.approx([5.0, 5.0])  # any iterable; frozen at the start


def test_smooth_of_nothing_is_empty():
    assert smooth([]) == []

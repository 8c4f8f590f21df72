"""Run-directory records: metrics as JSON lines, plus small JSON files (config, summary).

Metric keys are stable and documented in the README: ``train/loss``, ``train/acc``, ``test/loss``,
``test/acc``, and per cut ``k`` (the index of the block whose output is cut) ``sg/loss/<k>`` (the
synthesizer loss) and ``sg/cos/<k>`` (cosine between synthetic and target gradient); with forward
unlocks, ``si/loss/<k>`` and ``si/cos/<k>`` compare the synthetic input that replaces block ``k``'s
output with the real output. Every record also has ``step`` and ``epoch``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from synthgrad.checkpoints import list_checkpoints
from synthgrad.errors import SynthgradError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.pt"
FINAL_CHECKPOINT = "final.pt"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, SAMPLES_FILE, FINAL_CHECKPOINT)
"""Every file a run writes besides its figures (``*.png``)."""


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON (keys sorted, so runs diff cleanly)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class MetricsLog:
    """Appends one JSON object per line to ``RUN_DIR/metrics.jsonl``, flushed at once so a crashed run
    keeps every record it wrote."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self._file = self.path.open("a")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(dict(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file written by ``write_json``; a clear error if it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise SynthgradError(f"cannot read {path}: {error}") from None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl`` in order.

    A half-written last line (the run was killed while writing it) is left out; a broken line
    anywhere else means the file was damaged, and raises ``SynthgradError`` naming it.
    """
    path = Path(run_dir) / METRICS_FILE
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise SynthgradError(f"{path} line {number} is not valid JSON: the file is damaged") from None
    return records


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep only the records up to ``step``: a resumed run writes the later ones again."""
    path = Path(run_dir) / METRICS_FILE
    if path.exists():
        kept = [record for record in read_metrics(run_dir) if record["step"] <= step]
        path.write_text("".join(json.dumps(record) + "\n" for record in kept))


LOSS_SMOOTHING = 0.95
"""Exponential smoothing of loss curves, the seed gist's factor."""


def smooth(values: Iterable[float], factor: float = LOSS_SMOOTHING) -> list[float]:
    """Exponential moving average started at the first value, as the seed gist smoothed its loss."""
    smoothed: list[float] = []
    for value in values:
        smoothed.append(value if not smoothed else factor * smoothed[-1] + (1 - factor) * value)
    return smoothed


def clear_run_files(run_dir: Path) -> None:
    """Delete what a run wrote into ``run_dir`` (``RUN_FILES``, figures, checkpoints), so that a new run
    there cannot mix with the old one; other files are left alone."""
    stale = [path for path in Path(run_dir).iterdir() if path.name in RUN_FILES or path.suffix == ".png"]
    stale += [path for _, path in list_checkpoints(run_dir)]
    for path in stale:
        path.unlink()

"""Run-directory records: metrics as JSON lines (and, on request, TensorBoard event files), plus small JSON
files (config, summary).

The metric keys are one set across every command, listed in ``docs/metrics.md``: every record has
``step`` (and ``train/seconds`` with ``TrainConfig.record_seconds``); tasks add theirs (``train/loss``,
``test/acc``, ``val/bpc``, ...), the engine the synthesizers' (``sg/loss/<cut>``, ``sg/cos/<cut>``, ...).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

from synthgrad.checkpoints import list_checkpoints
from synthgrad.errors import SynthgradError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.pt"
FINAL_CHECKPOINT = "final.pt"
TENSORBOARD_DIR = "tensorboard"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, SAMPLES_FILE, FINAL_CHECKPOINT)
"""Every file a run writes besides its figures (``*.png``)."""


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON (keys sorted, so runs diff cleanly)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class MetricsLog:
    """Appends one JSON object per line to ``RUN_DIR/metrics.jsonl``, flushed at once so a crashed run
    keeps every record it wrote; with ``tensorboard``, also writes each numeric value as a scalar of
    TensorBoard event files in ``RUN_DIR/tensorboard`` (``torch.utils.tensorboard``), so runs open in the
    tool people use."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = False, resumed_at: Optional[int] = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self._writer = _tensorboard_writer(Path(run_dir) / TENSORBOARD_DIR, resumed_at) if tensorboard else None
        self._file = self.path.open("a")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(dict(record)) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, record["step"])
            self._writer.flush()

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _tensorboard_writer(log_dir: Path, resumed_at: Optional[int]) -> Any:
    """A ``SummaryWriter``; a resumed run's (``resumed_at``: its step) drops the events after that step,
    which the run writes again, as ``truncate_metrics`` drops the records."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SynthgradError("{0} needs the tensorboard package: pip install 'synthgrad[tensorboard]'",
                             "tensorboard") from None
    return SummaryWriter(log_dir=str(log_dir), purge_step=None if resumed_at is None else resumed_at + 1)


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


def clear_run_files(run_dir: Path) -> None:
    """Delete what a run wrote into ``run_dir`` (``RUN_FILES``, figures, checkpoints), so that a new run
    there cannot mix with the old one; other files are left alone."""
    stale = [path for path in Path(run_dir).iterdir() if path.name in RUN_FILES or path.suffix == ".png"]
    stale += [path for _, path in list_checkpoints(run_dir)]
    for path in stale:
        path.unlink()
    shutil.rmtree(Path(run_dir) / TENSORBOARD_DIR, ignore_errors=True)

"""Checkpoints that survive crashes: atomic writes, the newest K kept, the newest readable one found.

A checkpoint is a dict that ``torch.load`` reads, holding the model's ``state_dict`` under ``model``
and everything else needed to continue the run exactly (optimizer, schedule, step, RNG state, the
trainer's running values and the config). Writes go to a temporary file in the same directory that is
flushed to disk and then renamed over the target, so a process killed at any instant leaves either
the old file or the new one, never a torn one.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

from synthgrad.errors import SynthgradError

_PATTERN = re.compile(r"^checkpoint-(\d+)\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step:08d}.pt"


def save_atomically(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to ``path`` through a temporary file, fsync and rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-<step>.pt`` in ``run_dir``, oldest first."""
    found = []
    for path in Path(run_dir).iterdir():
        match = _PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints."""
    for _, path in list_checkpoints(run_dir)[:-keep] if keep > 0 else list_checkpoints(run_dir):
        path.unlink()


def load_latest_checkpoint(run_dir: Path) -> Optional[dict[str, Any]]:
    """The newest step checkpoint of ``run_dir`` that loads and is a checkpoint (a dict with the
    ``model`` and the ``step``), or ``None``; others are skipped (a crash cannot tear one, but a disk can)."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - any failure to read means: try the one before
            continue
        if isinstance(state, dict) and {"model", "step"} <= state.keys():
            return state
    return None


def load_states(checkpoint: dict[str, Any], path: Path, **stateful: Any) -> None:
    """``obj.load_state_dict(checkpoint[name])`` for each ``name=obj``; a checkpoint that does not fit
    (another model or configuration wrote it) raises ``CheckpointMismatch`` naming ``path``, its file."""
    for name, obj in stateful.items():
        try:
            obj.load_state_dict(checkpoint[name])
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
            detail = (f"it has no {name!r} entry" if isinstance(error, KeyError)
                      else (lines or [str(error)])[0].rstrip("."))
            raise CheckpointMismatch(f"{path} does not fit this run's {name} ({detail}); it was written by "
                                     "another model or configuration: resume from the run that wrote it, or start "
                                     "the run again") from None


class CheckpointMismatch(SynthgradError):
    """A checkpoint written by another model or configuration than the run that reads it."""

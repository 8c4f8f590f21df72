"""The exceptions synthgrad raises for what a user can fix or must know: one module, so that every layer
(the core, the engine, the pipeline, the data) raises the same types and the command line catches them.

A message names the input at fault and the fix. Where the input is a configuration field, the message
names it through a placeholder (``{0}`` for ``fields[0]``, ...), so that one check speaks to both
audiences: the library says ``batch_size``, the command line (``spelled`` with its flag names) says
``--batch-size``. Library code never spells a command-line flag.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional


class SynthgradError(Exception):
    """An error caused by user input; its message names the input and the fix.

    ``template`` may name configuration fields as ``{0}``, ``{1}``, ... for ``fields``; ``str(error)``
    spells them as the fields' own names, ``error.spelled(names)`` as ``names`` maps them.
    """

    def __init__(self, template: str, *fields: str) -> None:
        self.template, self.fields = template, fields
        super().__init__(self.spelled({}))

    def spelled(self, names: Mapping[str, str]) -> str:
        """The message with each field written as ``names`` spells it (its own name if absent)."""
        text = self.template
        for index, field in enumerate(self.fields):
            text = text.replace(f"{{{index}}}", names.get(field, field))
        return text


class InvalidConfig(SynthgradError, ValueError):
    """A configuration value, or combination of values, that cannot work; raised before any work. Also a
    ``ValueError``, which is what a bad argument to a library function is."""


class TrainingDiverged(SynthgradError):
    """A loss or gradient became non-finite; the message names the step, the parts at fault and the last
    good checkpoint."""


class TrainingInterrupted(SynthgradError):
    """Training stopped on request (Ctrl-C) after writing a checkpoint of ``step`` to ``checkpoint``;
    ``run_dir`` (default: the checkpoint's directory) is the run to continue."""

    def __init__(self, step: int, checkpoint: Path, run_dir: Optional[Path] = None) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint written to {checkpoint}")
        self.step, self.checkpoint = step, Path(checkpoint)
        self.run_dir = self.checkpoint.parent if run_dir is None else Path(run_dir)


class DatasetError(SynthgradError):
    """A dataset file could not be found, downloaded, verified or decoded; the message names it."""


class PipelineFailure(RuntimeError):
    """Another rank of a pipeline died or stopped answering; the message names it. Not a
    ``SynthgradError``: no input of this run is at fault."""

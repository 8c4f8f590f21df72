"""The one exception type for mistakes a user can fix (a bad path, a corrupt file, an impossible option).

The command line prints its message as a single line and exits with status 2 instead of showing a
traceback, so every message must name the input at fault and say how to fix it.
"""
from __future__ import annotations

from typing import Mapping


class SynthgradError(Exception):
    """An error caused by user input; its message names the input and the fix."""


class InvalidConfig(SynthgradError, ValueError):
    """A configuration value, or combination of values, that cannot work; raised before any work.

    The message names the options it is about through placeholders ``{0}``, ``{1}`` ... standing for the
    config fields in ``fields``, so that one check speaks to both audiences: the library says
    ``batch_size``, the command line (``spelled`` with its flag names) says ``--batch-size``. Also a
    ``ValueError``, which is what a bad argument to a library function is.
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

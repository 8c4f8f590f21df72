"""The error raised when a dataset file is missing, unreachable, corrupt or malformed.

A subclass of `SynthgradError` so the command line shows its message as one line; callers that
only load data can still catch dataset problems alone.
"""

from synthgrad.errors import SynthgradError


class DatasetError(SynthgradError):
    """A dataset file could not be found, downloaded, verified or decoded; the message names it."""

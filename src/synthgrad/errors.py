"""The one exception type for mistakes a user can fix (a bad path, a corrupt file, an impossible option).

The command line prints its message as a single line and exits with status 2 instead of showing a
traceback, so every message must name the input at fault and say how to fix it.
"""


class SynthgradError(Exception):
    """An error caused by user input; its message names the input and the fix."""

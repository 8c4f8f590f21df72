"""The length curriculum of the DNI paper's Copy and Repeat Copy experiments (arXiv 1608.05343, 3.1).

Training starts at length 1; whenever the error averaged over the last ``window`` batches at the
current length falls below ``threshold`` bits per character, that length counts as solved and the
next batch is one step longer. The result of a run is the longest length solved within its budget.
"""
from __future__ import annotations

from collections import deque

SOLVED_BITS = 0.15
"""Average error (bits per character) under which a length counts as solved (the paper's threshold)."""


class Curriculum:
    """Tracks the current ``length`` and the longest length solved, ``max_length_solved`` (0: none)."""

    def __init__(self, *, start: int = 1, threshold: float = SOLVED_BITS, window: int = 10) -> None:
        if start <= 0 or window <= 0 or threshold <= 0:
            raise ValueError(f"need start > 0, window > 0 and threshold > 0; got {start}, {window}, {threshold}")
        self.length = start
        self.threshold = threshold
        self.max_length_solved = start - 1
        self._errors: deque[float] = deque(maxlen=window)

    @property
    def average_error(self) -> float:
        """Mean error of the recent batches at the current length (``inf`` before the first)."""
        return sum(self._errors) / len(self._errors) if self._errors else float("inf")

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue the curriculum exactly."""
        return {"length": self.length, "max_length_solved": self.max_length_solved, "errors": list(self._errors)}

    def load_state_dict(self, state: dict) -> None:
        self.length, self.max_length_solved = state["length"], state["max_length_solved"]
        self._errors.clear()
        self._errors.extend(state["errors"])

    def update(self, error: float) -> bool:
        """Record one batch's error (bits per character); returns whether the length just grew."""
        self._errors.append(error)
        if len(self._errors) < self._errors.maxlen or self.average_error >= self.threshold:
            return False
        self.max_length_solved = self.length
        self.length += 1
        self._errors.clear()
        return True

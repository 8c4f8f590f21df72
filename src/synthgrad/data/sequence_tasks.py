"""Copy and Repeat Copy, the Neural Turing Machine tasks (Graves et al., arXiv 1410.5401, section 4)
used by the DNI paper (arXiv 1608.05343, section 3.1) to measure how far back an RNN can remember.

Protocol (one batch shares its length N and, for Repeat Copy, its repeat count R):

Copy, length N, ``2N + 1`` steps. Input ``(B, 2N+1, 9)``: steps ``0..N-1`` carry random 8-bit patterns
(each bit 1 with probability 1/2) in channels 0-7; step N is the delimiter (channel 8 = 1); the last N
steps are blank. Target ``(B, 2N+1, 8)``: the N patterns at steps ``N+1..2N``. Only those steps are
scored (``mask``).

Repeat Copy, length N, repeats R (drawn uniformly from ``1..max_repeats``), ``N + 1 + N*R + 1`` steps.
Input ``(B, steps, 10)``: the N patterns, then at step N the delimiter (channel 8 = 1) together with the
repeat count ``R / max_repeats`` in channel 9, then blanks. Target ``(B, steps, 9)``: the N patterns R
times over at steps ``N+1..N+N*R``, then an end marker (channel 8 = 1) at the last step; those
``N*R + 1`` steps are scored, all 9 channels.

Error is measured in bits per character: the binary cross-entropy of every scored channel, in bits,
summed over a step's channels and averaged over the scored steps and the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PATTERN_BITS = 8
SEQUENCE_TASKS = ("copy", "repeat-copy")


@dataclass
class SequenceBatch:
    """One batch of a sequence task: ``inputs (B, L, input_dim)``, ``targets (B, L, output_dim)`` (0/1
    floats), ``mask (L,)`` (bool: the scored steps)."""

    inputs: Tensor
    targets: Tensor
    mask: Tensor

    @property
    def length(self) -> int:
        return self.inputs.shape[1]


def task_dims(task: str) -> tuple[int, int]:
    """``(input_dim, output_dim)`` of ``task``."""
    if task == "copy":
        return PATTERN_BITS + 1, PATTERN_BITS
    if task == "repeat-copy":
        return PATTERN_BITS + 2, PATTERN_BITS + 1
    raise ValueError(f"task must be one of {SEQUENCE_TASKS}, got {task!r}")


def copy_batch(batch_size: int, length: int, generator: torch.Generator) -> SequenceBatch:
    """A Copy batch of ``length`` patterns (see the module docstring)."""
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    steps = 2 * length + 1
    patterns = torch.randint(0, 2, (batch_size, length, PATTERN_BITS), generator=generator).float()
    inputs = torch.zeros(batch_size, steps, PATTERN_BITS + 1)
    inputs[:, :length, :PATTERN_BITS] = patterns
    inputs[:, length, PATTERN_BITS] = 1.0  # delimiter
    targets = torch.zeros(batch_size, steps, PATTERN_BITS)
    targets[:, length + 1:] = patterns
    mask = torch.zeros(steps, dtype=torch.bool)
    mask[length + 1:] = True
    return SequenceBatch(inputs, targets, mask)


def repeat_copy_batch(batch_size: int, length: int, generator: torch.Generator, *, max_repeats: int = 3,
                      repeats: int | None = None) -> SequenceBatch:
    """A Repeat Copy batch of ``length`` patterns to be written ``repeats`` times (drawn uniformly from
    ``1..max_repeats`` when ``None``); see the module docstring."""
    if length <= 0 or max_repeats <= 0:
        raise ValueError(f"length and max_repeats must be positive, got {length} and {max_repeats}")
    if repeats is None:
        repeats = int(torch.randint(1, max_repeats + 1, (1,), generator=generator))
    if not 1 <= repeats <= max_repeats:
        raise ValueError(f"repeats must be in 1..{max_repeats}, got {repeats}")
    steps = length + 1 + length * repeats + 1
    patterns = torch.randint(0, 2, (batch_size, length, PATTERN_BITS), generator=generator).float()
    inputs = torch.zeros(batch_size, steps, PATTERN_BITS + 2)
    inputs[:, :length, :PATTERN_BITS] = patterns
    inputs[:, length, PATTERN_BITS] = 1.0  # delimiter
    inputs[:, length, PATTERN_BITS + 1] = repeats / max_repeats  # repeat count, normalised
    targets = torch.zeros(batch_size, steps, PATTERN_BITS + 1)
    targets[:, length + 1:steps - 1, :PATTERN_BITS] = patterns.repeat(1, repeats, 1)
    targets[:, steps - 1, PATTERN_BITS] = 1.0  # end marker
    mask = torch.zeros(steps, dtype=torch.bool)
    mask[length + 1:] = True
    return SequenceBatch(inputs, targets, mask)


def sequence_batch(task: str, batch_size: int, length: int, generator: torch.Generator, *,
                   max_repeats: int = 3) -> SequenceBatch:
    """A batch of ``task`` (``copy`` or ``repeat-copy``) at curriculum ``length``."""
    if task == "copy":
        return copy_batch(batch_size, length, generator)
    if task == "repeat-copy":
        return repeat_copy_batch(batch_size, length, generator, max_repeats=max_repeats)
    raise ValueError(f"task must be one of {SEQUENCE_TASKS}, got {task!r}")

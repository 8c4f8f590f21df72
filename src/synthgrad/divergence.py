"""Stop a run the step it goes non-finite, and say where: synthesizers can blow up, and a run that
silently trains on NaNs wastes everything after that step."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from synthgrad.checkpoints import list_checkpoints
from synthgrad.errors import SynthgradError

_CUT = re.compile(r"^interfaces\.(\w+)\.synthesizer\.")
_FORWARD_UNLOCK = re.compile(r"^forward_unlocks\.(\w+)\.synthesizer\.")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


class TrainingDiverged(SynthgradError):
    """The loss became non-finite; the message names the step, the tensors and the last good checkpoint."""


def part_of(parameter_name: str) -> str:
    """A readable name for the part of a model a parameter belongs to: ``synthesizer at cut 2`` and
    ``block 1`` in a ``DecoupledSequential``, the module path otherwise."""
    for pattern, label in ((_CUT, "synthesizer at cut {}"), (_FORWARD_UNLOCK, "input synthesizer at cut {}"),
                           (_BLOCK, "block {}")):
        match = pattern.match(parameter_name)
        if match:
            return label.format(match.group(1))
    return parameter_name.rpartition(".")[0] or parameter_name


def check_loss(loss: Tensor, model: nn.Module, step: int, run_dir: Path) -> None:
    """Raise ``TrainingDiverged`` if ``loss`` is not finite. A non-finite weight or synthetic gradient
    makes the next loss non-finite, so checking the loss every step stops a run within one step of
    either, at the cost of one scalar read; the tensors are looked at only then."""
    if torch.isfinite(loss):
        return
    bad = {}
    for name, param in model.named_parameters():
        for kind, tensor in (("weights", param), ("gradient", param.grad)):
            if tensor is not None and not torch.isfinite(tensor).all():
                bad.setdefault(part_of(name), set()).add(kind)
    if bad:
        where = "non-finite " + "; ".join(f"{' and '.join(sorted(kinds))} in {part}"
                                          for part, kinds in bad.items())
    else:
        largest = max(model.named_parameters(), key=lambda item: item[1].detach().abs().max().item())
        where = (f"every weight is finite, but the forward pass overflowed (largest weights: "
                 f"|w| = {largest[1].detach().abs().max().item():.3g} in {part_of(largest[0])})")
    checkpoints = list_checkpoints(run_dir)
    checkpoint = (f"the last good checkpoint is {checkpoints[-1][1]}" if checkpoints
                  else "no checkpoint was written before it")
    raise TrainingDiverged(f"training diverged at step {step}: the loss is {loss.item()}; {where}; {checkpoint}. "
                           "Lower --lr or --synth-lr and start again")

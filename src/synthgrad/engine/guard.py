"""Catch a run the step it goes non-finite, and say where: synthesizers can blow up, and a run that
silently trains on NaNs wastes everything after that step.

Every step, after the backward pass and before the optimizer moves anything, the loss and every gradient
are checked. That covers the three ways a run diverges within one step: a non-finite loss (from the
forward pass or a block's weights), a non-finite synthetic gradient (which the loss never sees, but
which makes the gradients of the blocks below its cut and of its synthesizer non-finite), and a
non-finite weight (a block's shows in the next loss, a synthesizer's in the next synthetic gradient).
The guard then either stops the run (``on_divergence="stop"``, the default) or skips the step and slows
the synthesizers down (``"skip"``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from synthgrad.checkpoints import list_checkpoints
from synthgrad.engine.config import ON_DIVERGENCE
from synthgrad.engine.optim import SYNTHESIZER_GROUP
from synthgrad.errors import TrainingDiverged

SKIP_SYNTH_LR_FACTOR = 0.5
"""Under ``on_divergence="skip"`` every skipped step multiplies the synthesizers' learning rate by this
for the rest of the run: a synthesizer blowing up is the usual cause, and a smaller step is the usual cure."""
MAX_CONSECUTIVE_SKIPS = 10
"""Under ``on_divergence="skip"`` the run stops as under ``"stop"`` when this many steps in a row were
skipped (the synthesizers' rate is then 0.5**10, about 1e-3 of what it was): by then the weights
themselves are non-finite, or every batch makes them so, and skipping more would only hide it."""

_CUT = re.compile(r"^interfaces\.(\w+)\.synthesizer\.")
_FORWARD_UNLOCK = re.compile(r"^forward_unlocks\.(\w+)\.synthesizer\.")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def part_of(parameter_name: str) -> str:
    """A readable name for the part of a model a parameter belongs to: ``synthesizer at cut 2`` and
    ``block 1`` in a ``DecoupledSequential``, the module path otherwise."""
    for pattern, label in ((_CUT, "synthesizer at cut {}"), (_FORWARD_UNLOCK, "input synthesizer at cut {}"),
                           (_BLOCK, "block {}")):
        match = pattern.match(parameter_name)
        if match:
            return label.format(match.group(1))
    return parameter_name.rpartition(".")[0] or parameter_name


def describe_divergence(loss: Tensor, model: nn.Module, step: int, checkpoint_dir: Path) -> str:
    """One line: the step, the loss, every part with non-finite weights or gradients, and the newest
    checkpoint in ``checkpoint_dir`` (which the guard never lets a non-finite step write over)."""
    bad: dict[str, set[str]] = {}
    for name, param in model.named_parameters():
        for kind, tensor in (("weights", param), ("gradient", param.grad)):
            if tensor is not None and not torch.isfinite(tensor).all():
                bad.setdefault(part_of(name), set()).add(kind)
    if bad:
        where = "non-finite " + "; ".join(f"{' and '.join(sorted(kinds))} in {part}"
                                          for part, kinds in bad.items())
    else:
        largest = max(model.named_parameters(), key=lambda item: item[1].detach().abs().max().item())
        where = (f"every weight and gradient is finite, but the forward pass or a gradient's sum overflowed "
                 f"(largest weights: |w| = {largest[1].detach().abs().max().item():.3g} in {part_of(largest[0])})")
    checkpoints = list_checkpoints(checkpoint_dir)
    checkpoint = (f"the last good checkpoint is {checkpoints[-1][1]}" if checkpoints
                  else "no checkpoint was written before it")
    return f"training diverged at step {step}: the loss is {loss.item()}; {where}; {checkpoint}"


class DivergenceGuard:
    """Checks each step before the optimizer moves anything; stops or skips a non-finite one.

    Use: ``before_forward()`` at the top of a step, ``allows_step(loss, step)`` after ``backward()``;
    when it returns ``False`` the step is skipped: the caller must not call ``optimizer.step()``
    (nor count the step's loss in its metrics). The guard has then restored the model's buffers (e.g.
    BatchNorm's running statistics, which the forward pass moved) and multiplied the synthesizers'
    learning rate by ``SKIP_SYNTH_LR_FACTOR`` in both the optimizer and the schedule's base rates, so
    that a checkpoint carries the lowered rate. Weights and optimizer state are left exactly as they
    were before the step.

    Args:
        model, optimizer, scheduler: what the engine steps; the scheduler must keep ``base_lrs``
            (every ``torch.optim.lr_scheduler.LRScheduler`` does), the synthesizers' param group is named
            ``SYNTHESIZER_GROUP`` (as ``build_optimizer`` names it).
        checkpoint_dir: where checkpoints are, for the message.
        on_divergence: one of ``ON_DIVERGENCE``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, checkpoint_dir: Path,
                 on_divergence: str = "stop") -> None:
        if on_divergence not in ON_DIVERGENCE:
            raise ValueError(f"on_divergence must be one of {ON_DIVERGENCE}, got {on_divergence!r}")
        self._model, self._optimizer, self._scheduler = model, optimizer, scheduler
        self._checkpoint_dir = checkpoint_dir
        self.is_skipping = on_divergence == "skip"
        self._params = list(model.parameters())
        self._synth_groups = [index for index, group in enumerate(optimizer.param_groups)
                              if group.get("name") == SYNTHESIZER_GROUP]
        self._buffers: list[Tensor] = []
        self._unit_scale = torch.ones((), device=next(model.parameters()).device)
        self.consecutive_skips = 0
        self._skipped = 0  # since the last pop()

    def before_forward(self) -> None:
        """Remember the buffers the forward pass is about to change (skipping mode only)."""
        if self.is_skipping:
            self._buffers = [buffer.detach().clone() for buffer in self._model.buffers()]

    def allows_step(self, loss: Tensor, step: int) -> bool:
        """``True`` if ``loss`` and every gradient are finite. Otherwise raise ``TrainingDiverged``
        (stopping mode, or ``MAX_CONSECUTIVE_SKIPS`` reached), or undo the step's side effects, lower
        the synthesizers' rate and return ``False``. One host sync per step, after one fused pass over
        every gradient: the check ``torch.amp.GradScaler`` makes before it lets an optimizer step (with a
        scale of 1, which leaves the gradients as they are)."""
        grads = [param.grad for param in self._params if param.grad is not None]
        found_non_finite = (~torch.isfinite(loss.detach().float())).reshape(1).float()
        if grads:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_non_finite, self._unit_scale)
        if not found_non_finite.item():
            self.consecutive_skips = 0
            return True
        message = describe_divergence(loss, self._model, step, self._checkpoint_dir)
        if not self.is_skipping:
            raise TrainingDiverged(f"{message}. Lower {{0}} or {{1}} and start again, or set {{2}} skip",
                                   "lr", "synth_lr", "on_divergence")
        if self.consecutive_skips + 1 >= MAX_CONSECUTIVE_SKIPS:
            raise TrainingDiverged(f"{message}; gave up after {MAX_CONSECUTIVE_SKIPS} skipped steps in a row. "
                                   "Lower {0} or {1} and start again", "lr", "synth_lr")
        with torch.no_grad():
            for buffer, saved in zip(self._model.buffers(), self._buffers):
                buffer.copy_(saved)
        for param in self._params:
            param.grad = None
        for index in self._synth_groups:
            self._scheduler.base_lrs[index] *= SKIP_SYNTH_LR_FACTOR
            self._optimizer.param_groups[index]["lr"] *= SKIP_SYNTH_LR_FACTOR
        self.consecutive_skips += 1
        self._skipped += 1
        return False

    @property
    def skipped_steps(self) -> int:
        """Steps skipped since the last ``pop()``."""
        return self._skipped

    def pop(self) -> dict[str, float]:
        """Metrics since the last call (skipping mode only): ``train/skipped_steps`` and the synthesizers'
        current learning rate ``train/synth_lr``; then reset."""
        if not self.is_skipping:
            return {}
        record: dict[str, float] = {"train/skipped_steps": self._skipped}
        if self._synth_groups:
            record["train/synth_lr"] = self._optimizer.param_groups[self._synth_groups[0]]["lr"]
        self._skipped = 0
        return record

    def state_dict(self) -> dict[str, int]:
        return {"consecutive_skips": self.consecutive_skips, "skipped": self._skipped}

    def load_state_dict(self, state: Optional[dict[str, int]]) -> None:
        """Restore from ``state_dict()``; ``None`` (a checkpoint written before the guard kept state)
        means nothing was skipped."""
        state = state or {}
        self.consecutive_skips, self._skipped = state.get("consecutive_skips", 0), state.get("skipped", 0)

"""The one optimizer builder and the one learning-rate schedule of every run."""
from __future__ import annotations

import math
from typing import Callable

import torch

from synthgrad.engine.config import TrainConfig
from synthgrad.engine.task import ParameterGroups

SYNTHESIZER_GROUP = "synthesizers"
"""The ``name`` of the synthesizers' param group (which the divergence guard slows down)."""


def build_optimizer(groups: ParameterGroups, config: TrainConfig) -> torch.optim.Optimizer:
    """One optimizer with a named param group per learning rate: ``blocks`` at ``lr``, ``decoupled`` at
    ``decoupled_lr`` (with the blocks when unset), ``synthesizers`` at ``synth_lr``; empty groups are left out.
    As few groups as rates: a fused optimizer makes one call per group, which costs a step ~0.2 ms each."""
    blocks, decoupled = groups.blocks, groups.decoupled
    if config.decoupled_lr is None:
        blocks, decoupled = blocks + decoupled, []
    rates = (("blocks", blocks, config.lr), ("decoupled", decoupled, config.decoupled_lr),
             (SYNTHESIZER_GROUP, groups.synthesizers, config.synth_lr))
    param_groups = [{"params": params, "lr": lr, "name": name} for name, params, lr in rates if params]
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, momentum=config.momentum)
    # fused: one kernel for all parameters instead of a dozen small ops per tensor; synthesizers add many
    # small tensors, so the unfused loop would charge DNI for optimizer overhead, not for its method
    return torch.optim.Adam(param_groups, fused=True)


def lr_multiplier(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The factor on every learning rate at each step: ``config.lr_schedule`` after ``config.warmup_steps``
    of linear warm-up (for ``torch.optim.lr_scheduler.LambdaLR``)."""
    def schedule(step: int) -> float:
        if config.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / max(config.warmup_steps, 1)) * schedule(step)

    return factor

"""Where a ``DecoupledSequential`` is cut into stages: contiguous groups of blocks balanced on their cost,
and each stage's modules (its blocks and the synthesizer at its output).

Decoupled Neural Interfaces across devices (Jaderberg et al., arXiv 1608.05343, section 2 "update unlock"):
each rank owns a contiguous group of blocks and the synthesizer that cuts the group's output; cuts inside a
group are dropped, so a stage's blocks learn by backprop among themselves and from the synthetic gradient at
the stage's output.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence

from torch import nn

from synthgrad.decoupled import DecoupledSequential
from synthgrad.errors import InvalidConfig
from synthgrad.synthesizers import Synthesizer


class StageModules(nn.Module):
    """Blocks ``first_block .. last_block`` of a model as ``chain`` (applied in order), and the synthesizer
    cutting the output of ``last_block`` (``None`` on the last stage, or without synthesizers): what one
    rank trains and checkpoints."""

    def __init__(self, chain: nn.Sequential, synthesizer: Optional[Synthesizer], first_block: int,
                 last_block: int) -> None:
        super().__init__()
        self.chain, self.synthesizer = chain, synthesizer
        self.first_block, self.last_block = first_block, last_block

    @property
    def cut_name(self) -> str:
        """The metric name of the cut at this stage's output: the index of the block it cuts."""
        return str(self.last_block)


def block_costs(model: DecoupledSequential) -> list[int]:
    """A block's share of a training step: its parameter count (multiply-adds per example of a dense
    layer's forward) times 3 for forward, weight gradient and input gradient, times 2 for the first
    block, whose input needs no gradient. Measured on the MNIST MLP with one thread: the first block
    takes 2.0x the time of a 256x256 hidden block; this model says 2.04x."""
    costs = [3 * sum(param.numel() for param in block.parameters()) for block in model.blocks]
    costs[0] = costs[0] * 2 // 3
    return costs


def cut_costs(model: DecoupledSequential) -> list[int]:
    """The share of a training step that the synthesizer cutting each block's output adds to the stage
    that owns it (0 where no synthesizer cuts): its parameter count times 3, for the prediction, the
    forward of its own training step and its weight gradients (a rough count for a synthesizer with
    hidden layers, whose backward also passes gradients between them). Only a stage's output
    synthesizer runs, so this counts once per stage boundary. On the MNIST MLP cDNI's
    factored linear synthesizer counts a quarter of a hidden block, yet a profile of the first rank
    put it at 12% of the rank's time (small matrices pay more per multiply-add); left out, a 7-layer
    split of equal block costs left the first rank the slower (28.4 against 26.3 us per sample)."""
    costs = [0] * len(model.blocks)
    for name, interface in model.named_cuts():
        costs[int(name)] = 3 * sum(param.numel() for param in interface.synthesizer.parameters())
    return costs


def partition(costs: Sequence[float], num_stages: int,
              boundary_costs: Optional[Sequence[float]] = None) -> list[range]:
    """Contiguous groups of block indices, one per stage, none empty, minimising the largest group's
    cost (ties: the earliest boundaries). A group that ends at block ``i`` below the last stage also
    pays ``boundary_costs[i]`` (its output synthesizer, ``cut_costs``). Raises ``InvalidConfig`` naming
    ``num_stages`` if there are fewer blocks than stages."""
    if num_stages < 1 or num_stages > len(costs):
        raise InvalidConfig(f"{{0}} {num_stages}: the model has {len(costs)} blocks, so it can be split into "
                            f"1 to {len(costs)} stages; choose {{0}} in that range or a deeper model", "num_stages")
    boundary_costs = boundary_costs or [0] * len(costs)
    best: Optional[tuple[float, tuple[int, ...]]] = None
    for cuts in itertools.combinations(range(1, len(costs)), num_stages - 1):
        bounds = (0, *cuts, len(costs))
        worst = max(sum(costs[start:stop]) + (boundary_costs[stop - 1] if stop < len(costs) else 0)
                    for start, stop in zip(bounds, bounds[1:]))
        if best is None or worst < best[0]:
            best = (worst, bounds)
    assert best is not None
    return [range(start, stop) for start, stop in zip(best[1], best[1][1:])]


def stage_groups(model: DecoupledSequential, num_stages: int) -> list[range]:
    """The block groups of a ``num_stages`` pipeline of ``model``: balanced on the blocks' costs and
    those of the synthesizers at the groups' outputs."""
    return partition(block_costs(model), num_stages, cut_costs(model))


def split_model(model: DecoupledSequential, groups: Sequence[range]) -> list[StageModules]:
    """The stages of ``model`` for block ``groups`` (see ``partition``), sharing ``model``'s parameters. Each
    stage keeps the synthesizer at its output; cuts inside a stage are dropped."""
    stages = []
    for index, group in enumerate(groups):
        is_last = index == len(groups) - 1
        cut = str(group[-1])
        interface = model.interfaces[cut] if not is_last and cut in model.interfaces else None
        stages.append(StageModules(nn.Sequential(*(model.blocks[block] for block in group)),
                                   None if interface is None else interface.synthesizer, group[0], group[-1]))
    return stages


def stage_cut_model(model: DecoupledSequential, groups: Sequence[range]) -> DecoupledSequential:
    """``model`` with cuts only at the stage boundaries of ``groups``: the single-process network that a
    pipeline of these stages trains (its synthesizers' parameters are shared with ``model``)."""
    boundaries = {group[-1] for group in groups[:-1]}
    synthesizers = [model.interfaces[str(index)].synthesizer
                    if index in boundaries and str(index) in model.interfaces else None
                    for index in range(len(model.blocks) - 1)]
    return DecoupledSequential(list(model.blocks), synthesizers)

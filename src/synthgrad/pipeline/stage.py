"""A stage: one rank's blocks, the synthesizer at their output, and their optimizers.

Decoupled Neural Interfaces across devices (Jaderberg et al., arXiv 1608.05343, section 2 "update
unlock" and section 3.1): each rank owns a contiguous group of a ``DecoupledSequential``'s blocks and
the synthesizer that cuts the group's output. A stage knows *what* to run; when to run it, and the
messages in between, belong to ``synthgrad.pipeline.schedule`` and ``synthgrad.pipeline.runtime``.

Nothing here communicates: every method takes tensors and returns tensors, so a test can drive the
stages of a pipeline in one process against plain autograd.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from synthgrad.decoupled import DecoupledSequential
from synthgrad.errors import SynthgradError
from synthgrad.functional import gradient_cosine, synthesizer_loss, synthesizer_loss_grad
from synthgrad.synthesizers import Synthesizer
from synthgrad.engine.config import TrainConfig
from synthgrad.engine.optim import lr_multiplier as lr_factor


@dataclass
class StageModules:
    """Blocks ``first_block .. last_block`` of a model as ``chain`` (applied in order), and the
    synthesizer cutting the output of ``last_block`` (``None`` on the last stage, or for backprop)."""

    chain: nn.Sequential
    synthesizer: Optional[Synthesizer]
    first_block: int
    last_block: int

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
    pays ``boundary_costs[i]`` (its output synthesizer, ``cut_costs``). Raises ``SynthgradError`` if
    there are fewer blocks than stages."""
    if num_stages < 1 or num_stages > len(costs):
        raise SynthgradError(f"--stages {num_stages}: the model has {len(costs)} blocks, so it can be split into "
                             f"1 to {len(costs)} stages; choose --stages in that range or add --layers")
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
    """The stages of ``model`` for block ``groups`` (see ``partition``). Each stage keeps the synthesizer
    at its output; cuts inside a stage are dropped, so a stage's blocks learn by backprop among
    themselves and from the synthetic gradient at the stage's output."""
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


def _optimizer(params: list[nn.Parameter], lr: float, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum)
    return torch.optim.Adam(params, lr=lr, fused=True)


class ForwardResult(NamedTuple):
    """What an update-unlocked forward produced: ``output`` (detached, ``(B, *features)``; the logits on
    the last stage), ``input_target`` (per-example scale gradient w.r.t. the stage's input, the target of
    the synthesizer below; ``None`` on the first stage) and ``loss`` (last stage only)."""

    output: Tensor
    input_target: Optional[Tensor]
    loss: Optional[Tensor]


class Stage:
    """One rank's share of training.

    Args:
        modules: the stage's blocks and output synthesizer (see ``split_model``).
        stage_index, num_stages: where the stage sits; the first has no input gradient to send, the
            last computes the loss.
        config: learning rates, optimizer and schedule; blocks of every stage but the last learn from
            synthetic gradients and use ``decoupled_lr`` when it is set.
        total_steps: length of the run, for the learning-rate schedule.
    """

    def __init__(self, modules: StageModules, *, stage_index: int, num_stages: int, config: TrainConfig,
                 total_steps: int) -> None:
        self.modules = modules
        self.chain, self.synthesizer = modules.chain, modules.synthesizer
        self.stage_index, self.num_stages = stage_index, num_stages
        self.config = config
        lr = config.lr if self.is_last or config.decoupled_lr is None else config.decoupled_lr
        factor = lr_factor(config, total_steps)
        self.optimizer = _optimizer(list(self.chain.parameters()), lr, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.synth_optimizer = self.synth_scheduler = None
        synth_params = [] if self.synthesizer is None else list(self.synthesizer.parameters())
        if synth_params:  # a fixed synthesizer (a test's exact one) has none
            self.synth_optimizer = _optimizer(synth_params, config.synth_lr, config)
            self.synth_scheduler = torch.optim.lr_scheduler.LambdaLR(self.synth_optimizer, factor)
        self._saved: dict[tuple[int, int], tuple[Optional[Tensor], Tensor]] = {}

    @property
    def is_first(self) -> bool:
        return self.stage_index == 0

    @property
    def is_last(self) -> bool:
        return self.stage_index == self.num_stages - 1

    # update-unlocked training ------------------------------------------------------------------

    def forward_unlocked(self, activation: Tensor, context: Optional[Tensor], labels: Optional[Tensor], *,
                         needs_input_target: bool = True) -> ForwardResult:
        """Run the blocks on ``activation`` ``(B, *in_features)`` and update them at once: from the
        synthetic gradient at the output (``context``: one-hot labels ``(B, classes)`` for cDNI), or, on
        the last stage, from the cross-entropy with ``labels`` ``(B,)``. Returns the output and the
        gradient for the input, at per-example scale: below the top cut it is this stage's synthetic
        gradient backpropagated through its blocks, the bootstrapped target of the cut below. Without
        ``needs_input_target`` (the synthesizer below does not train on this step) it is not computed."""
        if self.synthesizer is None and not self.is_last:
            raise ValueError(f"stage {self.stage_index} has no synthesizer at its output: it cannot update unlocked")
        batch_size = activation.shape[0]
        has_input_target = not self.is_first and needs_input_target
        activation = activation.detach().requires_grad_() if has_input_target else activation
        output = self.chain(activation)
        self.optimizer.zero_grad(set_to_none=True)
        loss = None
        if self.is_last:
            loss = nn.functional.cross_entropy(output, labels)
            loss.backward()
        else:
            with torch.no_grad():
                synthetic_grad = self.synthesizer(output.detach(), context)  # (B, *features), per-example scale
            output.backward(synthetic_grad / batch_size)
        self.optimizer.step()
        self.scheduler.step()
        input_target = activation.grad.mul_(batch_size) if has_input_target else None
        return ForwardResult(output.detach(), input_target, None if loss is None else loss.detach())

    def train_synthesizer(self, output: Tensor, context: Optional[Tensor], target_grad: Tensor, *,
                          measure: bool = True) -> Optional[Tensor]:
        """One step of the output synthesizer towards ``target_grad`` (per-example scale, shaped like
        ``output``), from the stage's ``output`` for the same examples. With ``measure``, returns
        ``(loss, cosine)`` of the prediction before the step, detached, shape ``(2,)``; else ``None``
        (measuring is not free, so a run measures every ``stats_every`` steps)."""
        synthetic_grad = self.synthesizer(output, context)
        if self.synth_optimizer is not None:
            self.synth_optimizer.zero_grad(set_to_none=True)
            # the loss's gradient in closed form, as a cut's backward computes it: no graph for the loss
            synthetic_grad.backward(synthesizer_loss_grad(synthetic_grad.detach(), target_grad))
            self.synth_optimizer.step()
            self.synth_scheduler.step()
        if not measure:
            return None
        prediction = synthetic_grad.detach()
        return torch.stack([synthesizer_loss(prediction, target_grad), gradient_cosine(prediction, target_grad)])

    # lockstep (exact pipelined backprop) ---------------------------------------------------------

    def forward_lockstep(self, key: tuple[int, int], activation: Tensor, labels: Optional[Tensor],
                         micro_batches: int) -> tuple[Tensor, Optional[Tensor]]:
        """Run the blocks on one micro-batch and keep the graph under ``key`` for ``backward_lockstep``.
        Returns the detached output and, on the last stage, the micro-batch's loss (the mean over the
        mini-batch is the mean of the micro-batches' losses, so each is divided by ``micro_batches``)."""
        if key[1] == 0:
            self.optimizer.zero_grad(set_to_none=True)
        activation = activation if self.is_first else activation.detach().requires_grad_()
        output = self.chain(activation)
        loss = None
        if self.is_last:
            loss = nn.functional.cross_entropy(output, labels) / micro_batches
            self._saved[key] = (activation, loss)
        else:
            self._saved[key] = (activation, output)
        return output.detach(), None if loss is None else loss.detach() * micro_batches

    def backward_lockstep(self, key: tuple[int, int], output_grad: Optional[Tensor]) -> Optional[Tensor]:
        """Backpropagate ``output_grad`` (dL/d output; ``None`` on the last stage) through the graph kept
        under ``key``; returns dL/d input (``None`` on the first stage)."""
        activation, output = self._saved.pop(key)
        output.backward(output_grad)
        return None if self.is_first else activation.grad

    def update(self) -> None:
        """The optimizer step after every micro-batch of a step has run backward."""
        self.optimizer.step()
        self.scheduler.step()

    # state -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {"chain": self.chain.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        if self.synth_optimizer is not None:
            state.update(synthesizer=self.synthesizer.state_dict(), synth_optimizer=self.synth_optimizer.state_dict(),
                         synth_scheduler=self.synth_scheduler.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.chain.load_state_dict(state["chain"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.synth_optimizer is not None:
            self.synthesizer.load_state_dict(state["synthesizer"])
            self.synth_optimizer.load_state_dict(state["synth_optimizer"])
            self.synth_scheduler.load_state_dict(state["synth_scheduler"])

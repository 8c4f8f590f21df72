"""Schedules: which rank does what, for which step, in which order, as plain data.

A *stage* knows what to run (``synthgrad.pipeline.stage``); a schedule knows when. A plan is a tuple
with one sequence of ``Action`` per rank, executed in order; every receive an action needs is named
by ``dependencies``, so ``simulate`` can check a plan for deadlocks and print it as a timeline without
starting a single process.

A rank's task (``synthgrad.pipeline.unlocked``, ``synthgrad.pipeline.lockstep``) executes, as its
``train_step(t)``, the actions its plan gives for step ``t`` (``unlocked_step``, ``lockstep_step``); ``U``,
the optimizer step, is the training engine's, after the task's step. Two plans:

- ``unlocked_plan``: update unlock across processes (paper section 2, "update unlock"). At step ``t`` a
  rank runs ``F(t)`` (receive the input, run the blocks, send the output up as soon as it exists,
  backpropagate the synthetic gradient at the output into the blocks, send the gradient for the input
  down as the target of the synthesizer below), then ``S(t - max_staleness)`` (the synthesizer's gradient
  towards the target that arrived for that step), then ``U(t)`` applies both. A synthesizer so learns from
  a target ``max_staleness`` block updates after its prediction, and a rank runs at most that far ahead of
  the rank above it. The last rank computes the loss and has no synthesizer. No rank ever waits for the
  pipeline to drain: the targets still to come at an interval's end are part of the rank's state, and
  those of the run's last ``max_staleness`` steps are received and dropped (their synthesizer steps would
  come after the last update).
- ``lockstep_plan``: exact pipelined backprop (no synthesizers). Per step, every micro-batch runs
  ``F`` up the pipeline, then ``B`` down it, then every rank applies one ``U`` (optimizer step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

FORWARD, SYNTH, BACKWARD, UPDATE = "forward", "synth", "backward", "update"
_LETTER = {FORWARD: "F", SYNTH: "S", BACKWARD: "B", UPDATE: "U"}
_DURATION = {FORWARD: 1, BACKWARD: 1, SYNTH: 0, UPDATE: 0}
"""Ticks an action takes in ``simulate``: the cheap ones (a linear synthesizer, an optimizer step) none."""


@dataclass(frozen=True)
class Action:
    """``op`` (``FORWARD``, ``SYNTH``, ``BACKWARD`` or ``UPDATE``) for training ``step`` (global, 0-based)
    and ``micro_batch`` within it (lockstep only)."""

    op: str
    step: int
    micro_batch: int = 0

    def __str__(self) -> str:
        return f"{_LETTER[self.op]}{self.step}" + (f".{self.micro_batch}" if self.micro_batch else "")


Plan = tuple[tuple[Action, ...], ...]
"""One ordered sequence of actions per rank."""


def unlocked_step(rank: int, num_stages: int, step: int, max_staleness: int,
                  synth_every: int = 1) -> tuple[Action, ...]:
    """What ``rank`` does at ``step`` of the update-unlocked schedule: ``F(step)``, ``S(step - max_staleness)``
    when that step exists and trains the synthesizers (``trains_synthesizer``; never on the last rank), ``U``."""
    earlier = step - max_staleness
    has_synth = rank < num_stages - 1 and earlier >= 0 and trains_synthesizer(earlier, synth_every)
    return (Action(FORWARD, step), *((Action(SYNTH, earlier),) if has_synth else ()), Action(UPDATE, step))


def unlocked_plan(num_stages: int, steps: range, max_staleness: int, synth_every: int = 1) -> Plan:
    """The update-unlocked plan of a run over ``steps`` (``unlocked_step`` of each), without the ``S`` of
    steps before ``steps.start``, whose targets a run that starts there does not wait for. Synthesizers
    train on the steps that are multiples of ``synth_every`` only (``trains_synthesizer``); no target is
    sent for the others."""
    _check(num_stages, steps)
    if max_staleness < 0:
        raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
    if synth_every < 1:
        raise ValueError(f"synth_every must be >= 1, got {synth_every}")
    return tuple(tuple(action for step in steps
                       for action in unlocked_step(rank, num_stages, step, max_staleness, synth_every)
                       if action.op != SYNTH or action.step >= steps.start)
                 for rank in range(num_stages))


def trains_synthesizer(step: int, synth_every: int) -> bool:
    """Whether the synthesizers train on the target of ``step`` (so the rank above sends it)."""
    return step % synth_every == 0


def lockstep_step(step: int, micro_batches: int = 1) -> tuple[Action, ...]:
    """What every rank does at ``step`` of exact pipelined backprop: ``F`` for every micro-batch, ``B`` for
    every one, ``U``."""
    return (*(Action(FORWARD, step, micro) for micro in range(micro_batches)),
            *(Action(BACKWARD, step, micro) for micro in range(micro_batches)), Action(UPDATE, step))


def lockstep_plan(num_stages: int, steps: range, micro_batches: int = 1) -> Plan:
    """Exact pipelined backprop over ``steps``: ``lockstep_step`` of each, the same on every rank."""
    _check(num_stages, steps)
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
    actions = tuple(action for step in steps for action in lockstep_step(step, micro_batches))
    return tuple(actions for _ in range(num_stages))


def _check(num_stages: int, steps: range) -> None:
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    if steps.step != 1:
        raise ValueError(f"steps must be a contiguous range, got {steps}")


def dependencies(action: Action, rank: int, num_stages: int) -> list[tuple[int, Action]]:
    """The actions on other ranks whose messages ``action`` on ``rank`` receives: its input activation
    (``F`` from the rank below), its target gradient (``S`` from the rank above's ``F``) or its output
    gradient (``B`` from the rank above's ``B``)."""
    if action.op == FORWARD and rank > 0:
        return [(rank - 1, action)]
    if action.op == SYNTH:
        return [(rank + 1, Action(FORWARD, action.step))]
    if action.op == BACKWARD and rank < num_stages - 1:
        return [(rank + 1, action)]
    return []


def simulate(plan: Plan) -> dict[tuple[int, Action], int]:
    """The tick each action starts at when ``F`` and ``B`` take one tick, ``S`` and ``U`` none, every
    send is non-blocking and every receive waits for its message. Raises ``ValueError`` naming the
    stuck actions if the plan deadlocks."""
    num_stages = len(plan)
    start: dict[tuple[int, Action], int] = {}
    finish: dict[tuple[int, Action], int] = {}
    position, free_at = [0] * num_stages, [0] * num_stages
    progressed = True
    while progressed:
        progressed = False
        for rank, actions in enumerate(plan):
            while position[rank] < len(actions):
                action = actions[position[rank]]
                needed = dependencies(action, rank, num_stages)
                if any(dependency not in finish for dependency in needed):
                    break
                begin = max([free_at[rank], *(finish[dependency] for dependency in needed)])
                start[rank, action] = begin
                finish[rank, action] = free_at[rank] = begin + _DURATION[action.op]
                position[rank] += 1
                progressed = True
    stuck = [f"rank {rank}: {actions[position[rank]]}" for rank, actions in enumerate(plan)
             if position[rank] < len(actions)]
    if stuck:
        raise ValueError(f"the plan deadlocks: {', '.join(stuck)} wait for messages that are never sent")
    return start


def staleness(plan: Plan) -> list[list[int]]:
    """Per rank, for each ``S`` in order: how many block updates (``F``) the rank made between the
    prediction for that step and the synthesizer's training on its target."""
    result = []
    for actions in plan:
        forwards, values = 0, []
        for action in actions:
            if action.op == FORWARD:
                forwards += 1
            elif action.op == SYNTH:
                values.append(forwards - (action.step - _first_step(actions) + 1))
        result.append(values)
    return result


def _first_step(actions: Sequence[Action]) -> int:
    return min(action.step for action in actions)


def format_plan(plan: Plan) -> str:
    """The plan as a timeline: one row per tick, one column per rank (see ``simulate``)."""
    start = simulate(plan)
    num_ticks = max(start.values(), default=-1) + 1
    cells = [[[] for _ in plan] for _ in range(num_ticks)]
    for (rank, action), tick in sorted(start.items(), key=lambda item: item[1]):
        cells[tick][rank].append(str(action))
    for rank, actions in enumerate(plan):  # keep each rank's order within a tick
        for row in cells:
            row[rank].sort(key=lambda text: [str(action) for action in actions].index(text))
    width = max([8, *(len(" ".join(cell)) + 2 for row in cells for cell in row)])
    lines = ["tick  " + "".join(f"rank {rank}".ljust(width) for rank in range(len(plan))).rstrip()]
    for tick, row in enumerate(cells):
        lines.append(f"{tick:>4}  " + "".join(" ".join(cell).ljust(width) for cell in row).rstrip())
    return "\n".join(lines)

"""Schedules as plans: which rank does what for which step, checked without starting any process."""
import pytest

from synthgrad.pipeline.schedule import (
    BACKWARD,
    FORWARD,
    SYNTH,
    UPDATE,
    Action,
    format_plan,
    lockstep_plan,
    lockstep_step,
    simulate,
    staleness,
    unlocked_plan,
    unlocked_step,
)


def test_unlocked_plan_trains_each_synthesizer_once_per_step_after_max_staleness_updates():
    steps = range(100, 110)
    for num_stages in (2, 3, 4):
        for max_staleness in (0, 1, 3):
            plan = unlocked_plan(num_stages, steps, max_staleness)
            for rank, actions in enumerate(plan):
                assert [a.step for a in actions if a.op == FORWARD] == list(steps)
                assert [a.step for a in actions if a.op == UPDATE] == list(steps)
                synths = [a.step for a in actions if a.op == SYNTH]
                # the last rank has no synthesizer; the targets of the last max_staleness steps are dropped
                assert synths == ([] if rank == num_stages - 1 else list(steps)[:len(steps) - max_staleness])
                assert {a.op for a in actions} <= {FORWARD, SYNTH, UPDATE}
            for values in staleness(plan)[:-1]:
                assert set(values) == {max_staleness}
            simulate(plan)  # no deadlock


def test_each_step_is_forward_then_the_synthesizer_of_an_earlier_step_then_the_update():
    assert [str(a) for a in unlocked_step(0, 2, 5, max_staleness=2)] == ["F5", "S3", "U5"]
    assert [str(a) for a in unlocked_step(1, 2, 5, max_staleness=2)] == ["F5", "U5"]  # the last rank
    assert [str(a) for a in unlocked_step(0, 3, 1, max_staleness=2)] == ["F1", "U1"]  # no step -1
    assert [str(a) for a in unlocked_step(0, 3, 8, max_staleness=1, synth_every=3)] == ["F8", "U8"]  # 7 % 3 != 0
    assert [str(a) for a in unlocked_step(0, 3, 7, max_staleness=1, synth_every=2)] == ["F7", "S6", "U7"]
    # a plan is its steps' actions: what a rank's train_step executes, step by step
    plan = unlocked_plan(3, range(0, 6), 2)
    assert plan[1] == tuple(action for step in range(6) for action in unlocked_step(1, 3, step, 2))
    assert lockstep_plan(2, range(3, 5), 2)[0] == lockstep_step(3, 2) + lockstep_step(4, 2)


def test_a_plan_that_starts_later_waits_for_no_target_of_earlier_steps():
    plan = unlocked_plan(2, range(10, 13), max_staleness=2)
    assert [str(a) for a in plan[0]] == ["F10", "U10", "F11", "U11", "F12", "S10", "U12"]
    simulate(plan)


def test_with_synth_every_only_those_steps_train_a_synthesizer():
    steps = range(10, 21)
    for max_staleness in (0, 1, 3):
        plan = unlocked_plan(3, steps, max_staleness, synth_every=3)
        for rank, actions in enumerate(plan):
            assert [a.step for a in actions if a.op == FORWARD] == list(steps)
            synths = [a.step for a in actions if a.op == SYNTH]
            assert synths == ([] if rank == 2 else [step for step in (12, 15, 18) if step + max_staleness < 21])
        for values in staleness(plan)[:-1]:
            assert set(values) == {max_staleness}
        simulate(plan)
    assert unlocked_plan(2, range(4), 1, synth_every=1) == unlocked_plan(2, range(4), 1)
    with pytest.raises(ValueError, match="synth_every"):
        unlocked_plan(2, range(4), 1, synth_every=0)


def test_unlocked_plan_of_two_ranks_is_the_documented_one():
    plan = unlocked_plan(2, range(0, 4), max_staleness=1)
    assert [str(a) for a in plan[0]] == ["F0", "U0", "F1", "S0", "U1", "F2", "S1", "U2", "F3", "S2", "U3"]
    assert [str(a) for a in plan[1]] == ["F0", "U0", "F1", "U1", "F2", "U2", "F3", "U3"]
    start = simulate(plan)
    # rank 1 runs step t while rank 0 already runs step t + 1: both busy once the pipeline is full
    assert [start[1, Action(FORWARD, t)] for t in range(4)] == [1, 2, 3, 4]
    assert [start[0, Action(FORWARD, t)] for t in range(4)] == [0, 1, 2, 3]


def test_no_rank_waits_for_a_backward_pass_in_the_unlocked_plan():
    """Update unlock: in steady state every rank runs a forward every tick, whatever the depth."""
    for num_stages in (2, 4):
        plan = unlocked_plan(num_stages, range(0, 20), max_staleness=1)
        start = simulate(plan)
        for rank in range(num_stages):
            ticks = [start[rank, Action(FORWARD, t)] for t in range(20)]
            assert ticks == list(range(rank, rank + 20))


def test_lockstep_plan_is_forward_backward_update_on_every_rank():
    plan = lockstep_plan(3, range(5, 7), micro_batches=2)
    expected = []
    for step in (5, 6):
        expected += [Action(FORWARD, step, 0), Action(FORWARD, step, 1), Action(BACKWARD, step, 0),
                     Action(BACKWARD, step, 1), Action(UPDATE, step)]
    assert all(list(actions) == expected for actions in plan)
    start = simulate(plan)
    # backward runs top-down: the rank below starts B only after the rank above finished it
    assert start[0, Action(BACKWARD, 5, 0)] > start[1, Action(BACKWARD, 5, 0)] > start[2, Action(BACKWARD, 5, 0)]


def test_a_plan_that_deadlocks_is_rejected_naming_the_stuck_actions():
    good = unlocked_plan(2, range(0, 2), max_staleness=0)
    assert [str(a) for a in good[0][:3]] == ["F0", "S0", "U0"]
    swapped = ((good[0][1], good[0][0], *good[0][2:]), good[1])  # S0 before F0 on rank 0
    with pytest.raises(ValueError, match="deadlocks: rank 0: S0"):
        simulate(swapped)


def test_format_plan_prints_a_timeline_per_rank():
    text = format_plan(unlocked_plan(2, range(0, 3), max_staleness=1))
    assert text.splitlines() == ["tick  rank 0    rank 1", "   0  F0", "   1  U0 F1     F0", "   2  S0 U1 F2  U0 F1",
                                 "   3  S1 U2     U1 F2", "   4            U2"]


@pytest.mark.parametrize("call, message", [
    (lambda: unlocked_plan(2, range(4), -1), "max_staleness"),
    (lambda: lockstep_plan(2, range(4), 0), "micro_batches"),
    (lambda: unlocked_plan(0, range(4), 1), "num_stages"),
])
def test_bad_plan_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()

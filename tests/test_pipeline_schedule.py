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
    simulate,
    staleness,
    unlocked_plan,
)


def test_unlocked_plan_trains_each_synthesizer_once_per_step_after_at_most_max_staleness_updates():
    steps = range(100, 110)
    for num_stages in (2, 3, 4):
        for max_staleness in (0, 1, 3):
            plan = unlocked_plan(num_stages, steps, max_staleness)
            for rank, actions in enumerate(plan):
                assert [a.step for a in actions if a.op == FORWARD] == list(steps)
                synths = [a.step for a in actions if a.op == SYNTH]
                assert synths == ([] if rank == num_stages - 1 else list(steps))  # the last rank has no synthesizer
                assert {a.op for a in actions} <= {FORWARD, SYNTH}
            for values in staleness(plan)[:-1]:
                assert max(values) == max_staleness and min(values) >= 0
            simulate(plan)  # no deadlock


def test_with_synth_every_only_those_steps_train_a_synthesizer_and_the_plan_still_drains():
    steps = range(10, 21)
    for max_staleness in (0, 1, 3):
        plan = unlocked_plan(3, steps, max_staleness, synth_every=3)
        for rank, actions in enumerate(plan):
            assert [a.step for a in actions if a.op == FORWARD] == list(steps)
            synths = [a.step for a in actions if a.op == SYNTH]
            assert synths == ([] if rank == 2 else [12, 15, 18])
        for values in staleness(plan)[:-1]:
            assert max(values) <= max_staleness and min(values) >= 0
        simulate(plan)
    assert unlocked_plan(2, range(4), 1, synth_every=1) == unlocked_plan(2, range(4), 1)
    with pytest.raises(ValueError, match="synth_every"):
        unlocked_plan(2, range(4), 1, synth_every=0)


def test_unlocked_plan_of_two_ranks_is_the_documented_one():
    plan = unlocked_plan(2, range(0, 4), max_staleness=1)
    assert [str(a) for a in plan[0]] == ["F0", "F1", "S0", "F2", "S1", "F3", "S2", "S3"]
    assert [str(a) for a in plan[1]] == ["F0", "F1", "F2", "F3"]
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
    swapped = ((good[0][1], good[0][0], *good[0][2:]), good[1])  # S0 before F0 on rank 0
    with pytest.raises(ValueError, match="deadlocks: rank 0: S0"):
        simulate(swapped)


def test_format_plan_prints_a_timeline_per_rank():
    text = format_plan(unlocked_plan(2, range(0, 3), max_staleness=1))
    assert text.splitlines() == ["tick  rank 0  rank 1", "   0  F0", "   1  F1      F0", "   2  S0 F2   F1",
                                 "   3  S1      F2", "   4  S2"]


@pytest.mark.parametrize("call, message", [
    (lambda: unlocked_plan(2, range(4), -1), "max_staleness"),
    (lambda: lockstep_plan(2, range(4), 0), "micro_batches"),
    (lambda: unlocked_plan(0, range(4), 1), "num_stages"),
])
def test_bad_plan_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()

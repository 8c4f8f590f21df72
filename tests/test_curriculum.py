"""The length curriculum grows the length exactly when the recent average error is below threshold."""
from synthgrad.experiments.curriculum import SOLVED_BITS, Curriculum


def test_length_grows_when_the_average_error_falls_below_the_threshold():
    curriculum = Curriculum(window=3)
    assert curriculum.threshold == SOLVED_BITS == 0.15
    assert [curriculum.update(error) for error in (0.5, 0.1, 0.1)] == [False, False, False]  # mean 0.23
    assert curriculum.length == 1 and curriculum.max_length_solved == 0
    assert curriculum.update(0.1) is True  # last three: 0.1, 0.1, 0.1
    assert curriculum.length == 2 and curriculum.max_length_solved == 1
    # a new length needs a full window of its own errors
    assert [curriculum.update(0.0) for _ in range(3)] == [False, False, True]
    assert curriculum.length == 3 and curriculum.max_length_solved == 2


def test_length_stays_while_the_error_is_high():
    curriculum = Curriculum(window=2)
    for _ in range(100):
        curriculum.update(0.2)
    assert curriculum.length == 1 and curriculum.max_length_solved == 0


def test_curriculum_state_dict_round_trip_continues_exactly():
    first = Curriculum(threshold=1.0, window=3)
    for error in (0.5, 0.5, 0.5, 0.2):  # solves length 1, then one error at length 2
        first.update(error)
    second = Curriculum(threshold=1.0, window=3)
    second.load_state_dict(first.state_dict())
    for curriculum in (first, second):
        curriculum.update(0.1)
        assert curriculum.update(0.1)  # the error carried over completes the window: length 2 solved
    assert second.length == first.length == 3 and second.max_length_solved == 2

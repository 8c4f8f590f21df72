"""The engine on a task of its own (not a classifier): what every task gets from it. Records with the task's
interval values and evaluations, an early finish, the summary, exact resume of the task's own state,
``record_seconds``, TensorBoard event files, and the verdicts of a run spread over several processes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from synthgrad import InvalidConfig, StepResult, Task, TrainConfig, TrainingDiverged, TrainingInterrupted, train


class Regression(Task):
    """Fits ``y = 3x`` from batches drawn by a generator of its own (its state). Finishes once the weight
    is within ``tolerance`` of 3; reports the weight at every interval's end and the error at evaluations."""

    progress_keys = ("train/mse",)

    def __init__(self, *, tolerance: float = 0.0, poison_at: int = -1) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(1, 1, bias=False)
        self.generator = torch.Generator().manual_seed(1)
        self.tolerance, self.poison_at = tolerance, poison_at
        self.evaluations = 0

    def train_step(self, step: int) -> StepResult:
        x = torch.randn(16, 1, generator=self.generator)
        loss = nn.functional.mse_loss(self.model(x), 3 * x)
        if step == self.poison_at:
            loss = loss * math.nan
        loss.backward()
        return StepResult(loss, {"train/mse": loss.detach()})

    def end_interval(self) -> dict[str, float]:
        return {"weight": self.model.weight.item()}

    def evaluate(self) -> dict[str, float]:
        self.evaluations += 1
        return {"test/error": abs(self.model.weight.item() - 3)}

    def is_finished(self) -> bool:
        return abs(self.model.weight.item() - 3) < self.tolerance

    def summary(self, last_record) -> dict:
        return {"weight": last_record["weight"], "evaluations": self.evaluations}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "evaluations": self.evaluations}

    def load_state_dict(self, state) -> None:
        self.generator.set_state(state["generator"])
        self.evaluations = state["evaluations"]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _config(**overrides) -> TrainConfig:
    return TrainConfig(**{"steps": 30, "lr": 0.05, "lr_schedule": "constant", "log_every": 5, "eval_every": 10,
                          "checkpoint_every": 10, "progress": False, **overrides})


def test_records_hold_the_interval_means_the_tasks_values_and_its_evaluations(tmp_path):
    summary = train(Regression(), _config(), tmp_path)
    records = _records(tmp_path)
    assert [record["step"] for record in records] == [5, 10, 15, 20, 25, 30]
    assert [record["step"] for record in records if "test/error" in record] == [10, 20, 30]
    assert all({"step", "train/mse", "weight"} <= record.keys() and "epoch" not in record for record in records)
    assert records[-1]["train/mse"] < records[0]["train/mse"]  # it learns
    assert summary["weight"] == records[-1]["weight"] and summary["evaluations"] == 3
    assert summary["steps"] == 30 and summary["train_seconds"] > 0 and summary["cpu_seconds"] > 0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_a_finished_task_stops_early_with_a_record_of_its_last_step(tmp_path):
    summary = train(Regression(tolerance=0.5), _config(steps=1000), tmp_path)
    last = _records(tmp_path)[-1]
    assert summary["steps"] == last["step"] < 1000 and abs(last["weight"] - 3) < 0.5
    assert "test/error" in last  # the last step is evaluated, as at the end of any run


def test_a_stopped_run_resumes_bit_identical_with_the_tasks_own_state(tmp_path):
    straight = Regression()
    train(straight, _config(), tmp_path / "straight")
    stopped = Regression()
    requests = iter([False] * 12 + [True])  # a stop requested after step 13, inside an interval
    with pytest.raises(TrainingInterrupted) as interrupted:
        train(stopped, _config(), tmp_path / "resumed", stop_requested=lambda: next(requests, False))
    assert interrupted.value.step == 13
    checkpoint = torch.load(interrupted.value.checkpoint, weights_only=True)
    resumed = Regression()
    train(resumed, _config(), tmp_path / "resumed", resume=checkpoint)
    assert torch.equal(resumed.model.weight, straight.model.weight)
    assert _records(tmp_path / "resumed") == _records(tmp_path / "straight")


def test_record_seconds_adds_the_training_clock_to_every_record(tmp_path):
    train(Regression(), _config(record_seconds=True), tmp_path)
    seconds = [record["train/seconds"] for record in _records(tmp_path)]
    assert len(seconds) == 6 and all(later > earlier for earlier, later in zip(seconds, seconds[1:]))


def test_tensorboard_event_files_hold_every_record(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(Regression(), _config(tensorboard=True), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/mse", "weight", "test/error"} <= set(events.Tags()["scalars"])
    mse = events.Scalars("train/mse")
    assert [event.step for event in mse] == [5, 10, 15, 20, 25, 30]
    assert [event.value for event in mse] == pytest.approx([record["train/mse"] for record in _records(tmp_path)])


def test_a_task_without_epochs_needs_steps(tmp_path):
    with pytest.raises(InvalidConfig, match="steps must be set: this task has no epochs"):
        train(Regression(), _config(steps=None), tmp_path)


class TwoRanks:
    """Rank 0 of a world of two whose other rank reports ``other`` at every interval end."""

    rank, world_size = 0, 2

    def __init__(self, other: dict[str, float]) -> None:
        self.other = other

    def gather_objects(self, obj):
        return [obj, (self.other, False)] if isinstance(obj, tuple) else [obj, 0.0]

    def broadcast_object(self, obj):
        return obj


@pytest.mark.parametrize("poison_at, other, message", [
    (12, {"sg/loss/1": 0.5},
     "between steps 10 and 15: weight is nan, train/mse is nan; the last good checkpoint is step 10"),
    (-1, {"sg/loss/1": math.nan}, "between steps 0 and 5: sg/loss/1 is nan; no checkpoint was written before it"),
])
def test_several_processes_stop_together_on_a_non_finite_metric_of_any_rank(tmp_path, poison_at, other, message):
    """A rank cannot skip a step the others have taken: the check moves to the interval's end, where
    rank 0 sees every rank's metrics, and every rank gets its verdict."""
    with pytest.raises(TrainingDiverged) as diverged:
        train(Regression(poison_at=poison_at), _config(), tmp_path, world=TwoRanks(other))
    assert message in str(diverged.value)
    assert not (tmp_path / "final.pt").exists()


def test_several_processes_write_one_summary_with_every_ranks_processor_time(tmp_path):
    summary = train(Regression(), _config(), tmp_path, world=TwoRanks({"sg/loss/1": 0.5}))
    assert summary["cpu_seconds"][1] == 0.0 and summary["cpu_seconds"][0] > 0
    assert all(record["sg/loss/1"] == 0.5 for record in _records(tmp_path))

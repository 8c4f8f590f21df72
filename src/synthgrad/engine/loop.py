"""The one training loop: ``train(task, config, run_dir)`` runs any ``Task`` and owns what runs share.

Per step: the task computes gradients (through its cuts, synthetic ones), the divergence guard checks them,
the optimizer steps and the schedule advances. Per logging interval: the means of the task's metrics and the
synthesizers' statistics become a record in ``metrics.jsonl``; at evaluations the task's evaluation joins
it; checkpoints fall on interval ends, and a stop request (Ctrl-C) writes one after the current step. A
resumed run continues from a checkpoint exactly: the optimizer, the schedule, the RNG, the task's own state
(data positions, curricula) and the half-filled interval are all in it.

Several processes (the ranks of a pipeline) each run this loop on their own task, passing ``world``: they
agree at every interval end whether to go on, stop on request or stop on a non-finite metric, and rank 0
alone writes records, shows progress and writes the summary.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol

import torch
from tqdm.auto import tqdm

from synthgrad.checkpoints import checkpoint_path, list_checkpoints, load_states, prune_checkpoints, save_atomically
from synthgrad.engine.config import TrainConfig, validate_train_config
from synthgrad.engine.guard import DivergenceGuard
from synthgrad.engine.interrupts import ctrl_c_requests_stop
from synthgrad.engine.optim import build_optimizer, lr_multiplier
from synthgrad.engine.records import FINAL_CHECKPOINT, SUMMARY_FILE, MetricsLog, truncate_metrics, write_json
from synthgrad.engine.statistics import CutStatistics, IntervalMeans
from synthgrad.engine.task import Task
from synthgrad.errors import InvalidConfig, TrainingDiverged, TrainingInterrupted

_GO, _STOP, _DIVERGED = "go", "stop", "diverged"
"""What rank 0 decides at an interval's end, for every rank: go on, stop on request, stop on divergence."""


class World(Protocol):
    """The processes that train one run together (a pipeline's ranks); ``LocalWorld`` is a single one."""

    rank: int
    world_size: int

    def gather_objects(self, obj: Any) -> list[Any]:
        """Rank 0 gets every rank's ``obj`` in rank order; the others get ``[]``."""

    def broadcast_object(self, obj: Any) -> Any:
        """Every rank gets rank 0's ``obj``."""


class LocalWorld:
    """One process: gathering and broadcasting hand the object back."""

    rank, world_size = 0, 1

    def gather_objects(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any) -> Any:
        return obj


def train(task: Task, config: TrainConfig, run_dir: Path, *, resume: Optional[dict[str, Any]] = None,
          on_record: Optional[Callable[[dict[str, Any]], None]] = None,
          stop_requested: Optional[Callable[[], bool]] = None, checkpoint_dir: Optional[Path] = None,
          world: Optional[World] = None) -> Optional[dict[str, Any]]:
    """Train ``task`` as ``config`` says, writing ``metrics.jsonl``, checkpoints, ``final.pt`` and
    ``summary.json`` into ``run_dir``; returns the summary (``None`` on ranks other than 0).

    The summary holds the task's ``summary`` and ``train_seconds`` (optimisation only: no evaluation, records
    or checkpoints), ``cpu_seconds`` (this process's processor time over the same windows) and ``steps``.

    Args:
        resume: a checkpoint of this run (a dict as ``torch.load`` returns it) to continue from; on the CPU
            the result is bit-identical to a run that was never interrupted.
        on_record: sees every metrics record as it is written.
        stop_requested: asked after every step (by rank 0's world at interval ends only); when it says yes
            the run writes a checkpoint and raises ``TrainingInterrupted``. ``None``: Ctrl-C requests it.
        checkpoint_dir: where this process's checkpoints go (default ``run_dir``).
        world: the processes training this run together (default: this one alone).

    Raises ``InvalidConfig`` before any work if ``config`` cannot work, ``TrainingDiverged`` at a non-finite
    step (see ``synthgrad.engine.guard``) and ``TrainingInterrupted`` on a stop request.
    """
    validate_train_config(config)
    run = _Run(task, config, Path(run_dir), Path(checkpoint_dir or run_dir), world or LocalWorld())
    if resume is not None:
        run.restore(resume)
    with _stop_requests(stop_requested) as stop, _torch_threads(config.threads):
        return run.train(stop, on_record)


@contextlib.contextmanager
def _torch_threads(count: Optional[int]) -> Iterator[None]:
    """``count`` torch threads while active (``None``: as they are), the previous number after."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _stop_requests(stop_requested: Optional[Callable[[], bool]]) -> Iterator[Callable[[], bool]]:
    if stop_requested is not None:
        yield stop_requested
        return
    with ctrl_c_requests_stop() as requested:
        yield requested


class _Run:
    """One run's state: the task, the optimizer and schedule the engine built for it, and the running values."""

    def __init__(self, task: Task, config: TrainConfig, run_dir: Path, checkpoint_dir: Path, world: World) -> None:
        if config.steps is None and task.steps_per_epoch is None:
            raise InvalidConfig("{0} must be set: this task has no epochs", "steps")
        self.task, self.config, self.world = task, config, world
        self.run_dir, self.checkpoint_dir = run_dir, checkpoint_dir
        self.total_steps = config.steps or config.epochs * task.steps_per_epoch
        self.eval_every = config.eval_every or task.steps_per_epoch or self.total_steps
        self.optimizer = build_optimizer(task.parameter_groups(), config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(config, self.total_steps))
        self.guard = DivergenceGuard(task.model, self.optimizer, self.scheduler, checkpoint_dir, config.on_divergence)
        self.checks_each_step = world.world_size == 1  # a rank cannot skip a step the others have taken
        self.cut_statistics, self.means = CutStatistics(task.model), IntervalMeans()
        self.device = next(task.model.parameters()).device
        self.step, self.train_seconds, self.cpu_seconds = 0, 0.0, 0.0
        self.interval_start = 0  # the first step of the current logging interval
        self.last_record: dict[str, Any] = {}
        self.is_reporting = world.rank == 0
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    # one step -------------------------------------------------------------------------------------------

    def train_step(self) -> None:
        """Compute, check and apply one step's update; time it."""
        step, started, cpu_started = self.step, time.perf_counter(), time.process_time()
        is_measured = (step + 1) % self.config.stats_every == 0 or step + 1 == self.total_steps
        if is_measured:
            unmeasured = self.cut_statistics.state_dict() if self.guard.is_skipping else None
            self.cut_statistics.attach()  # before forward: a cut takes its observers when it is placed
        self.guard.before_forward()
        self.optimizer.zero_grad(set_to_none=True)
        result = self.task.train_step(step)
        if is_measured:
            self.cut_statistics.detach()
        if not self.checks_each_step or self.guard.allows_step(result.loss, step + 1):
            self.optimizer.step()
            self.means.add(result.metrics)
        elif is_measured:
            self.cut_statistics.load_state_dict(unmeasured)  # a skipped step is not measured either
        self.scheduler.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.step += 1
        self._add_time(started, cpu_started)

    def _add_time(self, started: float, cpu_started: float) -> None:
        self.train_seconds += time.perf_counter() - started
        self.cpu_seconds += time.process_time() - cpu_started

    # the loop ---------------------------------------------------------------------------------------------

    def train(self, stop_requested: Callable[[], bool], on_record: Optional[Callable[[dict], None]]) -> Optional[dict]:
        log = (MetricsLog(self.run_dir, tensorboard=self.config.tensorboard, resumed_at=self.step or None)
               if self.is_reporting else None)
        progress = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                        disable=not (self.config.progress and self.is_reporting))
        try:
            while self.step < self.total_steps:
                self.train_step()
                progress.update()
                if self._ends_interval():
                    self._end_interval(stop_requested, log, progress, on_record)
                    if self.task.is_finished():
                        break
                elif self.world.world_size == 1 and stop_requested():
                    self._stop()
        finally:
            progress.close()
            if log is not None:
                log.close()
        return self._finish()

    def _ends_interval(self) -> bool:
        done, config = self.step, self.config
        return (done % config.log_every == 0 or done % self.eval_every == 0 or done == self.total_steps
                or self.task.is_finished())

    def _end_interval(self, stop_requested: Callable[[], bool], log: Optional[MetricsLog], progress: tqdm,
                      on_record: Optional[Callable[[dict], None]]) -> None:
        started, cpu_started = time.perf_counter(), time.process_time()
        metrics = {**self.task.end_interval(), **self.means.pop(missing_as_nan=self.guard.skipped_steps > 0),
                   **self.cut_statistics.pop(), **self.guard.pop()}
        gathered = self.world.gather_objects((metrics, stop_requested()))
        verdict, message = self.world.broadcast_object(self._verdict(gathered) if self.is_reporting else None)
        self._add_time(started, cpu_started)
        if verdict == _DIVERGED:
            raise TrainingDiverged(message)
        done = self.step
        is_last = done == self.total_steps or self.task.is_finished()
        evaluation = self.task.evaluate() if done % self.eval_every == 0 or is_last else None
        if self.is_reporting:
            record = self._record([interval for interval, _ in gathered], evaluation)
            log.write(record)
            if on_record is not None:
                on_record(record)
            progress.set_postfix({key: f"{record[key]:.3f}" for key in self.task.progress_keys if key in record})
        self.interval_start = done
        if verdict == _STOP and not is_last:
            self._stop()
        if self.config.checkpoint_every and done % self.config.checkpoint_every == 0 and not is_last:
            self._checkpoint()

    def _verdict(self, gathered: list[tuple[dict[str, float], bool]]) -> tuple[str, Optional[str]]:
        """Rank 0's decision from every rank's interval metrics and stop request. With one process the guard
        has checked every step already (and a skipped interval's loss is ``nan`` on purpose)."""
        bad = [f"{key} is {value}" for metrics, _ in gathered for key, value in metrics.items()
               if not math.isfinite(value)]
        if bad and not self.checks_each_step:
            return _DIVERGED, (f"training diverged between steps {self.interval_start} and {self.step}: "
                               f"{', '.join(bad)}; {self._last_good_checkpoint()}")
        return (_STOP if any(requested for _, requested in gathered) else _GO), None

    def _last_good_checkpoint(self) -> str:
        checkpoints = list_checkpoints(self.checkpoint_dir)
        return (f"the last good checkpoint is step {checkpoints[-1][0]} in {self.checkpoint_dir}" if checkpoints
                else "no checkpoint was written before it")

    def _record(self, every_rank: list[dict[str, float]], evaluation: Optional[dict[str, float]]) -> dict[str, Any]:
        record: dict[str, Any] = {"step": self.step}
        if self.task.steps_per_epoch:
            record["epoch"] = self.step / self.task.steps_per_epoch
        if self.config.record_seconds:
            record["train/seconds"] = self.train_seconds
        for metrics in every_rank:
            record.update(metrics)
        record.update(evaluation or {})
        self.last_record.update(record)
        return record

    # checkpoints, stopping, the end --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.task.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step, "rng": torch.get_rng_state(),
                "task": self.task.state_dict(),
                "engine": {"train_seconds": self.train_seconds, "cpu_seconds": self.cpu_seconds,
                           "interval_start": self.interval_start,
                           "last_record": self.last_record, "means": self.means.state_dict(),
                           "cut_statistics": self.cut_statistics.state_dict(), "guard": self.guard.state_dict()},
                "config": asdict(self.config)}

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from ``checkpoint`` (``state_dict()`` of this run); records after its step are dropped."""
        load_states(checkpoint, checkpoint_path(self.checkpoint_dir, checkpoint["step"]), model=self.task.model,
                    optimizer=self.optimizer, scheduler=self.scheduler, task=self.task)
        torch.set_rng_state(checkpoint["rng"])
        engine = checkpoint["engine"]
        self.step, self.interval_start = checkpoint["step"], engine["interval_start"]
        self.train_seconds, self.cpu_seconds = engine["train_seconds"], engine["cpu_seconds"]
        self.last_record = dict(engine["last_record"])
        self.means.load_state_dict(engine["means"], self.device)
        self.cut_statistics.load_state_dict(engine["cut_statistics"])
        self.guard.load_state_dict(engine["guard"])
        if self.is_reporting:
            truncate_metrics(self.run_dir, self.step)  # records written after the checkpoint are written again

    def _checkpoint(self) -> Path:
        path = checkpoint_path(self.checkpoint_dir, self.step)
        save_atomically(path, self.state_dict())
        prune_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        return path

    def _stop(self) -> None:
        path = self._checkpoint()
        raise TrainingInterrupted(self.step, path, run_dir=self.run_dir)

    def _finish(self) -> Optional[dict[str, Any]]:
        save_atomically(self.checkpoint_dir / FINAL_CHECKPOINT, self.state_dict())
        every_cpu_seconds = self.world.gather_objects(self.cpu_seconds)
        self.world.broadcast_object(None)  # every rank has finished before rank 0 reports
        if not self.is_reporting:
            return None
        self.task.finish(self.run_dir)
        summary = {**self.task.summary(self.last_record), "train_seconds": self.train_seconds,
                   "cpu_seconds": every_cpu_seconds if self.world.world_size > 1 else self.cpu_seconds,
                   "steps": self.step}
        write_json(self.run_dir / SUMMARY_FILE, summary)
        return summary

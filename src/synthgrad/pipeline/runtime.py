"""One rank of a pipeline run: join the process group, check that every rank agrees, and execute the plan.

Each rank runs ``run_rank`` in its own process (started by ``synthgrad.pipeline.launch`` or by
``torchrun``). Training is cut into segments at every logging, evaluation and checkpoint step; a
segment's plan (``synthgrad.pipeline.schedule``) drains the pipeline before it ends, so evaluation
and the per-stage checkpoints see every rank at the same step. Rank 0 writes the metrics, the
progress bar and the summary; the last rank computes the loss and the test accuracy and sends them
to rank 0. Labels are not sent along the pipeline: every rank draws the same batch order from
(seed, epoch), so each indexes the labels (the context of cDNI) itself.

At every segment's end the ranks also agree, through rank 0, whether to go on: a stop requested on any
rank (Ctrl-C) stops every rank at that step with a checkpoint of every stage (``TrainingInterrupted``),
and a non-finite loss in the interval stops every rank before any checkpoint (``TrainingDiverged``).
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from synthgrad.checkpoints import checkpoint_path, list_checkpoints, prune_checkpoints, save_atomically
from synthgrad.errors import TrainingDiverged
from synthgrad.errors import SynthgradError
from synthgrad.experiments.classifier import load_splits
from synthgrad.experiments.classifier_config import build_model
from synthgrad.engine.records import CONFIG_FILE, FINAL_CHECKPOINT, SUMMARY_FILE, MetricsLog, truncate_metrics, write_json
from synthgrad.pipeline.comm import ACTIVATION, EVALUATION, TARGET, Channel, PipelineFailure, describe_failure
from synthgrad.pipeline.config import (
    PipelineRun,
    Rendezvous,
    check_pipeline_run,
    comparable_config,
    config_differences,
    resolve_schedule,
)
from synthgrad.pipeline.schedule import (
    BACKWARD,
    FORWARD,
    SYNTH,
    UPDATE,
    lockstep_plan,
    trains_synthesizer,
    unlocked_plan,
)
from synthgrad.pipeline.stage import Stage, split_model
from synthgrad.engine.classification import Split, epoch_order
from synthgrad.errors import TrainingInterrupted
PROGRESS_KEYS = ("train/loss", "train/acc", "test/acc")

EVAL_CHUNK = 1000
NETWORK_THREAD_NICE = 10
"""Scheduling priority (nice value, 0 to 19) of gloo's network thread, which moves every message of a
CPU rank. It polls its sockets in a loop while this rank's compute thread holds the connection's lock
(strace: ~80 wakeups per message); at the compute thread's own priority that spin took the core from
the thread it waits for, 10-20% of each rank's processor time on a 2-core machine. At nice 10 it still
runs at once when a message arrives, but gives the core back as soon as it spins. Measured on the
benchmark's unlocked run (shared machine; a run's summary now reports these figures as
``network_cpu_us_per_sample`` and ``cpu_us_per_sample``): gloo's thread 10-13 -> 1-4 and each rank
54-62 -> 37-47 microseconds of processor time per sample."""
_GO, _STOP, _DIVERGED = "go", "stop", "diverged"
"""What rank 0 tells every rank at a segment's end: go on, stop on request, or stop on a non-finite loss."""


def stage_dir(run_dir: Path, rank: int) -> Path:
    """Where rank ``rank`` writes its checkpoints."""
    return Path(run_dir) / f"stage-{rank}"


def checkpoint_steps(run_dir: Path, rank: int) -> list[int]:
    """The steps rank ``rank`` has a checkpoint of in ``run_dir``, oldest first."""
    directory = stage_dir(run_dir, rank)
    return [step for step, _ in list_checkpoints(directory)] if directory.is_dir() else []


def newest_common_step(steps_of_each_rank: Iterable[Iterable[int]]) -> Optional[int]:
    """The newest step that every rank has a checkpoint of (None if there is none): where a pipeline
    run resumes, since the stages' checkpoints of one step belong together."""
    common = set.intersection(*map(set, steps_of_each_rank))
    return max(common) if common else None


def interrupted(run_dir: Path, step: int) -> TrainingInterrupted:
    """What a pipeline run stopped on request at ``step`` raises: every stage wrote its checkpoint of
    that step, and ``synthgrad resume run_dir`` continues from it."""
    return TrainingInterrupted(step, checkpoint_path(Path(run_dir) / "stage-*", step), run_dir=run_dir)


def _never() -> bool:
    return False


def run_rank(run: PipelineRun, rendezvous: Rendezvous, run_dir: Path, *, resume: bool = False,
             on_record: Optional[Callable[[dict[str, Any]], None]] = None,
             stop_requested: Callable[[], bool] = _never) -> Optional[dict[str, Any]]:
    """Train rank ``rendezvous.rank``'s stage of ``run`` in this process; returns the summary on rank 0.

    Raises ``SynthgradError`` for a bad configuration (also when the ranks' configurations differ) and
    ``PipelineFailure``, naming the rank, when another rank dies or stops answering for
    ``run.pipeline.timeout_s`` seconds. ``resume`` continues from the newest step that every stage
    has a checkpoint of. ``on_record`` sees every metrics record, on rank 0. ``stop_requested`` is asked
    at every logging step; once it says yes on any rank, every rank writes a checkpoint of that step
    and raises ``TrainingInterrupted``. A non-finite training or synthesizer loss in a logging interval
    raises ``TrainingDiverged`` on every rank (``on_divergence="stop"``), before any checkpoint of it.
    """
    groups = check_pipeline_run(run, min_stages=1)
    if rendezvous.world_size != run.pipeline.num_stages:
        raise SynthgradError(f"--stages {run.pipeline.num_stages} but the job has {rendezvous.world_size} processes: "
                             "start one process per stage (torchrun --nproc-per-node/--nnodes)")
    torch.set_num_threads(run.pipeline.threads)
    on_gpu = run.classifier.train.device == "cuda"
    device = torch.device("cuda", rendezvous.local_rank) if on_gpu else torch.device("cpu")
    _init_process_group(rendezvous, "nccl" if device.type == "cuda" else "gloo", run.pipeline.timeout_s)
    if device.type == "cpu":
        _lower_priority(_GLOO_NETWORK_THREAD, NETWORK_THREAD_NICE)
    channel = Channel(rendezvous.rank, rendezvous.world_size, run.pipeline.timeout_s, device)
    _check_same_config(channel, run)
    summary = _RankTrainer(run, groups, channel, device, Path(run_dir), on_record).train(resume, stop_requested)
    channel.flush()
    dist.destroy_process_group()
    return summary


def _init_process_group(rendezvous: Rendezvous, backend: str, timeout_s: float) -> None:
    where = "env://" if rendezvous.use_env else f"tcp://{rendezvous.addr}:{rendezvous.port}"
    try:
        dist.init_process_group(backend, init_method=where, rank=rendezvous.rank, world_size=rendezvous.world_size,
                                timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as error:
        text = str(error)
        if "address already in use" in text.lower() or "EADDRINUSE" in text:
            raise SynthgradError(f"port {rendezvous.port} on {rendezvous.addr} is in use: pass another --port "
                                 "(MASTER_PORT under torchrun) or leave --port out to pick a free one") from None
        raise PipelineFailure(f"rank {rendezvous.rank} could not join the other {rendezvous.world_size - 1} at "
                              f"{where} within {timeout_s:g} s ({text.splitlines()[0][:160]}): check that every "
                              "rank started with the same address and port") from None


_GLOO_NETWORK_THREAD = "gloo_tcp_loop"


def _threads_named(thread_name: str) -> Optional[list[Path]]:
    """The ``/proc/self/task/<tid>`` directories of this process's threads called ``thread_name`` (Linux;
    None where threads cannot be listed)."""
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return None
    named = []
    for task in tasks:
        try:
            if (task / "comm").read_text().strip() == thread_name:
                named.append(task)
        except OSError:  # a thread that just ended
            continue
    return named


def _lower_priority(thread_name: str, nice: int) -> None:
    """Give this process's threads called ``thread_name`` the scheduling priority ``nice`` (Linux, where
    each thread has its own; elsewhere, or if the threads cannot be listed, nothing happens)."""
    try:
        for task in _threads_named(thread_name) or []:
            os.setpriority(os.PRIO_PROCESS, int(task.name), max(nice, os.getpriority(os.PRIO_PROCESS, int(task.name))))
    except (OSError, AttributeError):  # a thread that just ended, or no setpriority
        pass


def _thread_cpu_seconds(thread_name: str) -> Optional[float]:
    """Processor seconds (user and system) that this process's threads called ``thread_name`` have used so
    far: 0 if there is none, None where threads cannot be listed (not Linux)."""
    tasks = _threads_named(thread_name)
    if tasks is None:
        return None
    ticks = 0
    for task in tasks:
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()  # after the name, which may hold spaces
        except OSError:  # a thread that just ended
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (proc(5) fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def _cpu_seconds() -> tuple[float, Optional[float]]:
    """Processor seconds used so far by this process (all its threads) and by its gloo network thread
    (0 without one, e.g. on NCCL; None where threads cannot be listed)."""
    return time.process_time(), _thread_cpu_seconds(_GLOO_NETWORK_THREAD)


def _check_same_config(channel: Channel, run: PipelineRun) -> None:
    """Every rank must train the same run: rank 0 compares the others' configs with its own."""
    configs = channel.gather_objects(comparable_config(run))
    verdict = None
    if channel.rank == 0:
        mismatches = [f"rank {rank}: {', '.join(config_differences(configs[0], other))}"
                      for rank, other in enumerate(configs) if other != configs[0]]
        if mismatches:
            verdict = ("the ranks were started with different configurations (" + "; ".join(mismatches)
                       + " differ from rank 0's): start every rank with the same options")
    verdict = channel.broadcast_object(verdict)
    channel.flush()  # the verdict reaches every rank before any exits
    if verdict:
        raise SynthgradError(verdict)


class _RankTrainer:
    """The state of one rank during a run: its stage, its data, and the running metrics."""

    def __init__(self, run: PipelineRun, groups: list[range], channel: Channel, device: torch.device,
                 run_dir: Path, on_record: Optional[Callable[[dict[str, Any]], None]]) -> None:
        self.run, self.channel, self.device, self.run_dir, self.on_record = run, channel, device, run_dir, on_record
        self.rank, self.num_stages = channel.rank, channel.world_size
        self.config, self.train_config = run.classifier, run.classifier.train
        self.schedule = resolve_schedule(run)
        self.is_first, self.is_last = self.rank == 0, self.rank == self.num_stages - 1

        train_split, test_split, _ = load_splits(self.config.dataset, self.config.data_dir,
                                                 download=self.config.download, dry_run=self.config.dry_run)
        if self.config.dry_run:
            train_split = Split(train_split.inputs[:1024], train_split.labels[:1024])
            test_split = Split(test_split.inputs[:512], test_split.labels[:512])
        if self.train_config.batch_size > len(train_split.labels):
            raise SynthgradError(f"--batch-size {self.train_config.batch_size} is larger than the "
                                 f"{len(train_split.labels)} training examples; choose a smaller batch size")
        torch.manual_seed(self.train_config.seed)
        model = build_model(self.config)  # every rank builds all of it: the same initial weights everywhere
        shapes = _block_output_shapes(model, train_split.inputs[:2])
        modules = split_model(model, groups)[self.rank]
        modules.chain.to(device).train()
        if modules.synthesizer is not None:
            modules.synthesizer.to(device).train()
        self.modules = modules
        self.in_shape = None if self.is_first else shapes[modules.first_block - 1]
        self.out_shape = shapes[modules.last_block]

        self.num_examples = len(train_split.labels)
        self.steps_per_epoch = self.num_examples // self.train_config.batch_size
        self.total_steps = self.train_config.steps or self.train_config.epochs * self.steps_per_epoch
        self.stage = Stage(modules, stage_index=self.rank, num_stages=self.num_stages, config=self.train_config,
                           total_steps=self.total_steps)
        # rank 0 keeps the inputs, the last rank the labels; every rank needs the contexts (cDNI)
        self.train_inputs = train_split.inputs.to(device) if self.is_first else None
        self.test_inputs = test_split.inputs.to(device) if self.is_first else None
        self.train_labels = train_split.labels.to(device)
        self.test_labels = test_split.labels.to(device)
        self.train_contexts = (nn.functional.one_hot(self.train_labels, self.train_config.num_classes).float()
                               if self.train_config.use_context else None)
        self._order: tuple[int, Optional[Tensor]] = (-1, None)
        self.torch_schedule = self._torch_schedule() if self.schedule in ("gpipe", "1f1b") else None
        self._torch_stepped = False

        self.best_acc, self.train_seconds, self.last_record = 0.0, 0.0, {}
        # this rank's processor seconds over the same windows as train_seconds: (process, network thread)
        self.cpu_seconds: tuple[float, Optional[float]] = (0.0, 0.0)
        self.checkpoint_step: Optional[int] = None  # the newest step checkpoint, for a divergence's message
        self._reset_interval()

    # data ------------------------------------------------------------------------------------------

    def _batch(self, step: int) -> Tensor:
        """The indices of the training examples of ``step`` ``(batch_size,)``."""
        epoch, batch = divmod(step, self.steps_per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.train_config.seed, epoch, self.num_examples).to(self.device))
        size = self.train_config.batch_size
        return self._order[1][batch * size:(batch + 1) * size]

    def _reset_interval(self) -> None:
        self.loss_sum, self.correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        self.seen = 0
        self.sg_sum, self.sg_count = torch.zeros(2, device=self.device), 0
        self.synth_count, self.staleness_sum, self.staleness_max = 0, 0, 0

    def _count(self, logits: Tensor, labels: Tensor, loss: Tensor) -> None:
        self.loss_sum += loss * len(labels)
        self.correct += (logits.argmax(dim=1) == labels).sum()
        self.seen += len(labels)

    # segments ----------------------------------------------------------------------------------------

    def train(self, resume: bool, stop_requested: Callable[[], bool] = _never) -> Optional[dict[str, Any]]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # a new run: no checkpoint of an earlier one may be resumed from by mistake
            shutil.rmtree(stage_dir(self.run_dir, self.rank), ignore_errors=True)
        start_step = self._resume() if resume else 0
        if self.rank == 0 and not resume:
            write_json(self.run_dir / CONFIG_FILE, asdict(self.run))
            truncate_metrics(self.run_dir, 0)  # the records of an earlier run in this directory go
        self.channel.broadcast_object(self.channel.gather_objects("ready"))  # every rank has its data and model
        log_every = self.train_config.log_every
        eval_every = self.train_config.eval_every or self.steps_per_epoch
        ends = sorted({*range(log_every, self.total_steps, log_every), *range(eval_every, self.total_steps, eval_every),
                       self.total_steps})
        progress = tqdm(total=self.total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=self.rank != 0 or not self.train_config.progress)
        log = MetricsLog(self.run_dir) if self.rank == 0 else None
        try:
            for stop in (end for end in ends if end > start_step):
                started, cpu_started = time.perf_counter(), _cpu_seconds()
                self._run_segment(range(start_step, stop), progress)
                self.channel.flush()
                gathered = self.channel.gather_objects((self._interval_stats(), stop_requested()))
                self.train_seconds += time.perf_counter() - started
                self._add_cpu_seconds(cpu_started, _cpu_seconds())
                verdict, message = self._verdict(range(start_step, stop), gathered)
                if verdict == _DIVERGED:
                    raise TrainingDiverged(message)
                is_eval = stop % eval_every == 0 or stop == self.total_steps
                test = self._evaluate() if is_eval else None
                if log is not None:
                    self._write_record(log, stop, [stats for stats, _ in gathered], test, progress)
                is_stopped = verdict == _STOP and stop < self.total_steps
                checkpoint_every = self.train_config.checkpoint_every
                if is_stopped or (checkpoint_every and stop % checkpoint_every == 0 and stop < self.total_steps):
                    self._save(checkpoint_path(stage_dir(self.run_dir, self.rank), stop), stop)
                    prune_checkpoints(stage_dir(self.run_dir, self.rank), self.train_config.keep_checkpoints)
                    self.checkpoint_step = stop
                if is_stopped:
                    self.channel.flush()  # e.g. the last rank's test accuracy, before this rank exits
                    raise interrupted(self.run_dir, stop)
                start_step = stop
        finally:
            progress.close()
            if log is not None:
                log.close()
        self._save(stage_dir(self.run_dir, self.rank) / FINAL_CHECKPOINT, self.total_steps)
        # every rank is done once this returns; rank 0 also gets every rank's processor seconds
        every_cpu_seconds = self.channel.broadcast_object(self.channel.gather_objects(self.cpu_seconds))
        return self._summary(every_cpu_seconds) if self.rank == 0 else None

    def _add_cpu_seconds(self, started: tuple[float, Optional[float]], ended: tuple[float, Optional[float]]) -> None:
        """Add the processor seconds between two ``_cpu_seconds()`` readings to this rank's totals."""
        process, network = self.cpu_seconds
        process += ended[0] - started[0]
        network = None if None in (network, started[1], ended[1]) else network + ended[1] - started[1]
        self.cpu_seconds = (process, network)

    def _verdict(self, steps: range, gathered: list[tuple[dict[str, float], bool]]) -> tuple[str, Optional[str]]:
        """Rank 0 decides from every rank's interval statistics and stop request whether every rank goes
        on, stops on request or stops on divergence (with the message); every rank gets its decision."""
        decision: tuple[str, Optional[str]] = (_GO, None)
        if self.rank == 0:
            bad = [f"{key} is {value}" for stats, _ in gathered for key, value in stats.items()
                   if key.startswith(("train/loss", "sg/loss/")) and not math.isfinite(value)]
            if bad:
                checkpoint = (f"the last good checkpoint is step {self.checkpoint_step} of every stage in "
                              f"{self.run_dir}" if self.checkpoint_step is not None
                              else "no checkpoint was written before it")
                decision = (_DIVERGED, f"training diverged between steps {steps.start} and {steps.stop}: "
                                       f"{', '.join(bad)}; {checkpoint}")
            elif any(requested for _, requested in gathered):
                decision = (_STOP, None)
        decision = self.channel.broadcast_object(decision)
        self.channel.flush()  # every rank has the decision before any acts on it, e.g. by exiting
        return decision

    def _run_segment(self, steps: range, progress: tqdm) -> None:
        if self.torch_schedule is not None:
            for step in steps:
                self._torch_step(step)
                progress.update()
            return
        pipeline = self.run.pipeline
        plan = (unlocked_plan(self.num_stages, steps, pipeline.max_staleness, self.train_config.synth_every)
                if self.schedule == "unlocked" else lockstep_plan(self.num_stages, steps, pipeline.micro_batches))
        pending: dict[int, tuple[Tensor, Optional[Tensor], Callable[[], Tensor]]] = {}
        inputs = self._post_inputs(steps) if self.schedule == "unlocked" and not self.is_first else None
        last_forward = -1
        for action in plan[self.rank]:
            if action.op == FORWARD and self.schedule == "unlocked":
                self._forward_unlocked(action.step, pending, inputs)
                last_forward = action.step
                progress.update()
            elif action.op == SYNTH:
                output, context, target_arrived = pending.pop(action.step)
                measured = self.stage.train_synthesizer(output, context, target_arrived(),
                                                        measure=self._is_measured(action.step))
                if measured is not None:
                    self.sg_sum += measured
                    self.sg_count += 1
                self.synth_count += 1
                self.staleness_sum += last_forward - action.step
                self.staleness_max = max(self.staleness_max, last_forward - action.step)
            elif action.op == FORWARD:
                self._forward_lockstep(action.step, action.micro_batch)
            elif action.op == BACKWARD:
                self._backward_lockstep(action.step, action.micro_batch)
            elif action.op == UPDATE:
                self.stage.update()
                progress.update()

    def _is_measured(self, step: int) -> bool:
        """Whether the synthesizer's loss and cosine are measured on the target of ``step``: on every
        ``stats_every``-th step and the last, as in one process (``TrainConfig.stats_every``). With
        ``synth_every`` > 1 a target stands for the steps up to the next one that has a target."""
        config = self.train_config
        return any((covered + 1) % config.stats_every == 0 or covered + 1 == self.total_steps
                   for covered in range(step, min(step + config.synth_every, self.total_steps)))

    def _post_inputs(self, steps: range) -> Iterator[Callable[[], Tensor]]:
        """The receives of a segment's input activations, each posted one step ahead of its use."""
        shape = (self.train_config.batch_size, *self.in_shape)
        posted = self.channel.post_recv(shape, self.rank - 1, ACTIVATION)
        for step in steps:
            following = self.channel.post_recv(shape, self.rank - 1, ACTIVATION) if step + 1 < steps.stop else None
            yield posted
            posted = following

    def _forward_unlocked(self, step: int, pending: dict[int, tuple[Tensor, Optional[Tensor], Callable[[], Tensor]]],
                          inputs: Optional[Iterator[Callable[[], Tensor]]]) -> None:
        index = self._batch(step)
        activation = self.train_inputs[index] if inputs is None else next(inputs)()
        context = self.train_contexts[index] if self.train_contexts is not None and not self.is_last else None
        labels = self.train_labels[index] if self.is_last else None
        has_target = trains_synthesizer(step, self.train_config.synth_every)  # else no target goes down
        result = self.stage.forward_unlocked(activation, context, labels, needs_input_target=has_target)
        if not self.is_last:
            self.channel.send(result.output, self.rank + 1, ACTIVATION)
            if has_target:  # the target is received while this rank computes the next steps
                pending[step] = (result.output, context,
                                 self.channel.post_recv(result.output.shape, self.rank + 1, TARGET))
        if result.input_target is not None:
            self.channel.send(result.input_target, self.rank - 1, TARGET)
        if self.is_last:
            self._count(result.output, labels, result.loss)

    def _micro_batch(self, step: int, micro_batch: int) -> Tensor:
        size = self.train_config.batch_size // self.run.pipeline.micro_batches
        return self._batch(step)[micro_batch * size:(micro_batch + 1) * size]

    def _forward_lockstep(self, step: int, micro_batch: int) -> None:
        index = self._micro_batch(step, micro_batch)
        activation = (self.train_inputs[index] if self.is_first
                      else self.channel.recv((len(index), *self.in_shape), self.rank - 1, ACTIVATION))
        labels = self.train_labels[index] if self.is_last else None
        output, loss = self.stage.forward_lockstep((step, micro_batch), activation, labels,
                                                   self.run.pipeline.micro_batches)
        if self.is_last:
            self._count(output, labels, loss)
        else:
            self.channel.send(output, self.rank + 1, ACTIVATION)

    def _backward_lockstep(self, step: int, micro_batch: int) -> None:
        size = self.train_config.batch_size // self.run.pipeline.micro_batches
        output_grad = None if self.is_last else self.channel.recv((size, *self.out_shape), self.rank + 1, TARGET)
        input_grad = self.stage.backward_lockstep((step, micro_batch), output_grad)
        if not self.is_first:
            self.channel.send(input_grad, self.rank - 1, TARGET)

    # torch.distributed.pipelining, the baseline ------------------------------------------------------

    def _torch_schedule(self) -> Any:
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        stage = PipelineStage(self.stage.chain, self.rank, self.num_stages, self.device)
        schedule_class = ScheduleGPipe if self.schedule == "gpipe" else Schedule1F1B
        return schedule_class(stage, self.run.pipeline.micro_batches, loss_fn=nn.functional.cross_entropy)

    def _torch_step(self, step: int) -> None:
        index = self._batch(step)
        self.stage.optimizer.zero_grad(set_to_none=True)
        # A schedule's first step infers shapes by running the blocks of every stage but the first on
        # uninitialised tensors, which leaves NaN in BatchNorm's running statistics (measured: 10% test
        # accuracy). Their values from before that step are put back: the step's own batches are lost
        # to the running averages, nothing else.
        buffers = (None if self._torch_stepped
                   else {name: buffer.clone() for name, buffer in self.stage.chain.named_buffers()})
        self._torch_stepped = True
        try:
            if self.is_first:
                self.torch_schedule.step(self.train_inputs[index])
            elif self.is_last:
                losses: list[Tensor] = []
                logits = self.torch_schedule.step(target=self.train_labels[index], losses=losses)
                self._count(logits.detach(), self.train_labels[index], torch.stack(losses).detach().mean())
            else:
                self.torch_schedule.step()
        except RuntimeError as error:
            if not any(word in str(error) for word in ("gloo", "NCCL", "onnection", "imed out")):
                raise  # a bug, not a peer's failure
            peers = " or ".join(str(peer) for peer in (self.rank - 1, self.rank + 1) if 0 <= peer < self.num_stages)
            raise PipelineFailure(describe_failure(peers, self.run.pipeline.timeout_s, error)) from None
        if buffers is not None:
            for name, buffer in self.stage.chain.named_buffers():
                buffer.copy_(buffers[name])
        self.stage.update()

    # metrics, evaluation, checkpoints ----------------------------------------------------------------

    def _interval_stats(self) -> dict[str, float]:
        stats: dict[str, float] = {}
        if self.is_last and self.seen:
            stats.update({"train/loss": self.loss_sum.item() / self.seen, "train/acc": self.correct.item() / self.seen})
        cut = self.modules.cut_name
        if self.sg_count:
            stats.update({f"sg/loss/{cut}": self.sg_sum[0].item() / self.sg_count,
                          f"sg/cos/{cut}": self.sg_sum[1].item() / self.sg_count})
        if self.synth_count:
            stats.update({f"sg/staleness/{cut}": self.staleness_sum / self.synth_count,
                          f"sg/staleness_max/{cut}": self.staleness_max})
        self._reset_interval()
        return stats

    @torch.no_grad()
    def _evaluate(self) -> Optional[dict[str, float]]:
        """Run the test split through the pipeline in eval mode; rank 0 gets the last rank's result."""
        chain = self.stage.chain
        chain.eval()
        total_loss, correct, count = 0.0, 0, len(self.test_labels)
        try:
            for start in range(0, count, EVAL_CHUNK):
                size = min(EVAL_CHUNK, count - start)
                activation = (self.test_inputs[start:start + size] if self.is_first
                              else self.channel.recv((size, *self.in_shape), self.rank - 1, EVALUATION))
                output = chain(activation)
                if not self.is_last:
                    self.channel.send(output, self.rank + 1, EVALUATION)
                    continue
                labels = self.test_labels[start:start + size]
                total_loss += nn.functional.cross_entropy(output, labels, reduction="sum").item()
                correct += (output.argmax(dim=1) == labels).sum().item()
        finally:
            chain.train()
        self.channel.flush()
        result = {"test/loss": total_loss / count, "test/acc": correct / count} if self.is_last else None
        if self.num_stages == 1:
            return result
        if self.is_last:
            self.channel.send_object(result, 0)
            return None
        return self.channel.recv_object(self.num_stages - 1) if self.is_first else None

    def _write_record(self, log: MetricsLog, step: int, gathered: list[dict[str, float]],
                      test: Optional[dict[str, float]], progress: tqdm) -> None:
        record: dict[str, Any] = {"step": step, "epoch": step / self.steps_per_epoch,
                                  "train/seconds": self.train_seconds}
        for stats in gathered:
            record.update(stats)
        if test is not None:
            record.update(test)
            self.best_acc = max(self.best_acc, test["test/acc"])
        log.write(record)
        self.last_record.update(record)
        if self.on_record is not None:
            self.on_record(record)
        progress.set_postfix({key: f"{record[key]:.3f}" for key in PROGRESS_KEYS if key in record})

    def _save(self, path: Path, step: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"stage": self.stage.state_dict(), "stage_index": self.rank, "step": step, "rng": torch.get_rng_state(),
                 "config": asdict(self.run), "cpu_seconds": self.cpu_seconds}
        if self.rank == 0:
            state["trainer"] = {"best_acc": self.best_acc, "train_seconds": self.train_seconds,
                                "last_record": self.last_record}
        save_atomically(path, state)

    def _resume(self) -> int:
        """Load the newest step that every stage has a checkpoint of; returns it."""
        everyone = self.channel.gather_objects(checkpoint_steps(self.run_dir, self.rank))
        step = self.channel.broadcast_object(newest_common_step(everyone) if self.rank == 0 else None)
        if step is None:
            raise SynthgradError(f"{self.run_dir} has no step with a checkpoint of every stage (the run stopped "
                                 "before its first one); start it again with --force")
        directory = stage_dir(self.run_dir, self.rank)
        state = torch.load(checkpoint_path(directory, step), map_location=self.device, weights_only=True)
        self.stage.load_state_dict(state["stage"])
        torch.set_rng_state(state["rng"])
        self.cpu_seconds = tuple(state.get("cpu_seconds", (0.0, 0.0)))  # absent from checkpoints of older versions
        self.checkpoint_step = step
        if self.rank == 0:
            trainer = state["trainer"]
            self.best_acc, self.train_seconds = trainer["best_acc"], trainer["train_seconds"]
            self.last_record = dict(trainer["last_record"])
            truncate_metrics(self.run_dir, step)
        return step

    def _summary(self, every_cpu_seconds: list[tuple[float, Optional[float]]]) -> dict[str, Any]:
        """The run's summary, written to ``summary.json``; ``every_cpu_seconds`` holds each rank's
        ``cpu_seconds``, reported per training sample."""
        samples = self.total_steps * self.train_config.batch_size

        def per_sample(seconds: Optional[float]) -> Optional[float]:
            return None if seconds is None else seconds * 1e6 / samples

        summary = {
            "test_acc": self.last_record["test/acc"], "best_test_acc": self.best_acc,
            "test_loss": self.last_record["test/loss"], "train_seconds": self.train_seconds,
            "samples_per_s": samples / max(self.train_seconds, 1e-9),
            # processor time per training sample of each rank, in microseconds, over the training loop only:
            # what to compare on a shared machine, where wall time also measures the other jobs
            "cpu_us_per_sample": [per_sample(process) for process, _ in every_cpu_seconds],
            "network_cpu_us_per_sample": [per_sample(network) for _, network in every_cpu_seconds],
            "steps": self.total_steps, "epochs": self.total_steps / self.steps_per_epoch,
            "method": self.config.method, "model": self.config.model, "dataset": self.config.dataset,
            "schedule": self.schedule, "num_stages": self.num_stages,
            **{key: value for key, value in self.last_record.items() if key.startswith("sg/")},
        }
        write_json(self.run_dir / SUMMARY_FILE, summary)
        return summary


def _block_output_shapes(model: nn.Module, example: Tensor) -> list[tuple[int, ...]]:
    """The feature shape of every block's output, from a forward pass in eval mode (no state changes)."""
    model.eval()
    shapes = []
    with torch.no_grad():
        for block in model.blocks:
            example = block(example)
            shapes.append(tuple(example.shape[1:]))
    model.train()
    return shapes

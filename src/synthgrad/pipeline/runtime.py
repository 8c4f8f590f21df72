"""One rank of a pipeline run: join the process group, check that every rank agrees, build this rank's task
from what the caller hands it (``RankSetup``), and train it on the engine.

Each rank runs ``run_rank`` in its own process (started by ``synthgrad.pipeline.launch`` or by ``torchrun``).
The engine (``synthgrad.engine.train``) does what every run does, with the ranks agreeing at every logging
interval's end through their ``Channel``: a stop requested on any rank stops every rank at that step with a
checkpoint of every stage (``run_dir/stage-<rank>/``), and a non-finite loss stops every rank before any
checkpoint of it. Rank 0 writes the records, the progress bar and the summary.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from synthgrad.checkpoints import checkpoint_path, list_checkpoints
from synthgrad.decoupled import DecoupledSequential
from synthgrad.engine import TrainConfig, train
from synthgrad.engine.records import CONFIG_FILE, SUMMARY_FILE, clear_run_files, write_json
from synthgrad.errors import InvalidConfig, PipelineFailure, SynthgradError, TrainingInterrupted
from synthgrad.pipeline.comm import Channel
from synthgrad.pipeline.config import PipelineConfig, Rendezvous, check_pipeline_config, config_differences
from synthgrad.pipeline.lockstep import LockstepTask, TorchScheduleTask
from synthgrad.pipeline.network_thread import GLOO_NETWORK_THREAD, NETWORK_THREAD_NICE, ThreadClock, lower_priority
from synthgrad.pipeline.split import split_model
from synthgrad.pipeline.stage import LossFn, Stage
from synthgrad.pipeline.task import MetricsFn, RankTask, StageData
from synthgrad.pipeline.unlocked import UnlockedTask


@dataclass
class RankSetup:
    """What the caller hands one rank: the model, where it is cut, this rank's data, and how it learns.

    Args:
        model: the whole model, built with the same weights on every rank (e.g. from the same seed); the
            rank keeps the blocks of its stage and the synthesizer at their output.
        groups: the blocks of each stage (``stage_groups``).
        data: this rank's data.
        example_input: a few network inputs (e.g. ``(2, C, H, W)``): the shapes of the messages between
            stages follow from running the model on them.
        loss_fn: the loss of the last stage, ``loss_fn(output, target)``, a batch mean.
        metrics_fn: batch means besides the loss, e.g. accuracy (``synthgrad.pipeline.task.MetricsFn``).
        synth_every: the synthesizers train on every n-th step's target only.
        run_info: what names the run in its summary.
    """

    model: DecoupledSequential
    groups: Sequence[range]
    data: StageData
    example_input: Tensor
    loss_fn: LossFn = nn.functional.cross_entropy
    metrics_fn: Optional[MetricsFn] = None
    synth_every: int = 1
    run_info: Mapping[str, Any] = field(default_factory=dict)


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
    that step, and resuming ``run_dir`` continues from it."""
    return TrainingInterrupted(step, checkpoint_path(Path(run_dir) / "stage-*", step), run_dir=run_dir)


def run_rank(build: Callable[[int, torch.device], RankSetup], rendezvous: Rendezvous, run_dir: Path, *,
             pipeline: PipelineConfig, train_config: TrainConfig, device: str = "cpu",
             config: Optional[Mapping[str, Any]] = None, comparable: Optional[Mapping[str, Any]] = None,
             resume: bool = False, on_record: Optional[Callable[[dict[str, Any]], None]] = None,
             stop_requested: Optional[Callable[[], bool]] = None) -> Optional[dict[str, Any]]:
    """Train rank ``rendezvous.rank`` of a pipeline in this process; returns the summary on rank 0.

    Args:
        build: ``build(rank, device)`` gives this rank's ``RankSetup``; called once every rank has joined
            and agreed on the configuration.
        pipeline, train_config: how the run is spread over the ranks, and how the engine trains each.
        device: ``cpu`` (gloo) or ``cuda`` (NCCL, the GPU ``rendezvous.local_rank``).
        config: what ``config.json`` holds (rank 0 writes it when a run starts).
        comparable: what every rank must have alike (default ``config``); rank 0 compares.
        resume: continue from the newest step that every stage has a checkpoint of.
        on_record, stop_requested: as in ``synthgrad.engine.train``; ``stop_requested`` is asked at every
            logging interval's end on every rank.

    Raises ``InvalidConfig`` for a bad configuration (also when the ranks' configurations differ),
    ``PipelineFailure`` naming the rank when another rank dies or stops answering for ``pipeline.timeout_s``
    seconds, ``TrainingDiverged`` on every rank when a loss became non-finite, and ``TrainingInterrupted``
    when a stop was requested (every stage then wrote a checkpoint of the same step).
    """
    if rendezvous.world_size != pipeline.num_stages:
        raise InvalidConfig(f"{{0}} {pipeline.num_stages} but the job has {rendezvous.world_size} processes: "
                            "start one process per stage (torchrun --nproc-per-node/--nnodes)", "num_stages")
    torch.set_num_threads(train_config.threads or 1)  # one simulated device per rank unless told otherwise
    on_gpu = device == "cuda"
    torch_device = torch.device("cuda", rendezvous.local_rank) if on_gpu else torch.device("cpu")
    _init_process_group(rendezvous, "nccl" if on_gpu else "gloo", pipeline.timeout_s)
    lower_priority(GLOO_NETWORK_THREAD, NETWORK_THREAD_NICE)  # a CPU rank's (NCCL has none)
    channel = Channel(rendezvous.rank, rendezvous.world_size, pipeline.timeout_s, torch_device)
    _check_same_config(channel, dict(comparable if comparable is not None else config or {}))
    train_config = replace(train_config, record_seconds=True)  # the bench's timelines read train/seconds
    task = _rank_task(build(channel.rank, torch_device), channel, pipeline, train_config,
                      ThreadClock(GLOO_NETWORK_THREAD))
    run_dir = Path(run_dir)
    checkpoint = _newest_checkpoint(channel, run_dir, torch_device) if resume else _start(channel, run_dir, config)
    channel.broadcast_object(channel.gather_objects("ready"))  # every rank has its data: the clocks start together
    try:
        summary = train(task, train_config, run_dir, resume=checkpoint, on_record=on_record,
                        stop_requested=stop_requested, checkpoint_dir=stage_dir(run_dir, channel.rank), world=channel)
    except TrainingInterrupted as stopped:
        raise interrupted(run_dir, stopped.step) from None
    task.close()
    summary = _complete_summary(channel, task, summary, run_dir)
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
            raise SynthgradError(f"port {rendezvous.port} on {rendezvous.addr} is in use: pass another {{0}} "
                                 "(MASTER_PORT under torchrun) or leave {0} out to pick a free one", "port") from None
        raise PipelineFailure(f"rank {rendezvous.rank} could not join the other {rendezvous.world_size - 1} at "
                              f"{where} within {timeout_s:g} s ({text.splitlines()[0][:160]}): check that every "
                              "rank started with the same address and port") from None


def _check_same_config(channel: Channel, comparable: dict[str, Any]) -> None:
    """Every rank must train the same run: rank 0 compares the others' configs with its own."""
    configs = channel.gather_objects(comparable)
    verdict = None
    if channel.rank == 0:
        mismatches = [f"rank {rank}: {', '.join(config_differences(configs[0], other))}"
                      for rank, other in enumerate(configs) if other != configs[0]]
        if mismatches:
            verdict = ("the ranks were started with different configurations (" + "; ".join(mismatches)
                       + " differ from rank 0's): start every rank with the same options")
    verdict = channel.broadcast_object(verdict)
    if verdict:
        raise InvalidConfig(verdict)


def _rank_task(setup: RankSetup, channel: Channel, pipeline: PipelineConfig, train_config: TrainConfig,
               network_clock: Callable[[], Optional[float]]) -> RankTask:
    """This rank's task for the schedule ``pipeline`` resolves to."""
    rank, num_stages = channel.rank, channel.world_size
    modules = split_model(setup.model, setup.groups)
    schedule = check_pipeline_config(pipeline, train_config, batch_size=setup.data.batch_size, min_stages=1,
                                     has_synthesizers=any(stage.synthesizer is not None for stage in modules))
    shapes = _block_output_shapes(setup.model, setup.example_input)
    mine = modules[rank].to(channel.device).train()
    stage = Stage(mine, stage_index=rank, num_stages=num_stages, loss_fn=setup.loss_fn)
    common = dict(in_shape=None if rank == 0 else shapes[mine.first_block - 1], out_shape=shapes[mine.last_block],
                  schedule=schedule, metrics_fn=setup.metrics_fn, run_info=setup.run_info, network_clock=network_clock)
    if schedule == "unlocked":
        steps_per_epoch = setup.data.steps_per_epoch or 0
        total_steps = train_config.steps or train_config.epochs * steps_per_epoch
        return UnlockedTask(stage, channel, setup.data, total_steps=total_steps, max_staleness=pipeline.max_staleness,
                            synth_every=setup.synth_every, stats_every=train_config.stats_every, **common)
    task_class = LockstepTask if schedule == "lockstep" else TorchScheduleTask
    return task_class(stage, channel, setup.data, micro_batches=pipeline.micro_batches, **common)


def _block_output_shapes(model: DecoupledSequential, example: Tensor) -> list[tuple[int, ...]]:
    """The feature shape of every block's output, from a forward pass in eval mode (no state changes)."""
    was_training = model.training
    model.eval()
    shapes = []
    with torch.no_grad():
        for block in model.blocks:
            example = block(example)
            shapes.append(tuple(example.shape[1:]))
    model.train(was_training)
    return shapes


def _start(channel: Channel, run_dir: Path, config: Optional[Mapping[str, Any]]) -> None:
    """A new run: no checkpoint or record of an earlier one in ``run_dir`` may mix with it."""
    shutil.rmtree(stage_dir(run_dir, channel.rank), ignore_errors=True)
    if channel.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        clear_run_files(run_dir)
        if config is not None:
            write_json(run_dir / CONFIG_FILE, dict(config))


def _newest_checkpoint(channel: Channel, run_dir: Path, device: torch.device) -> dict[str, Any]:
    """This rank's checkpoint of the newest step that every stage has one of."""
    everyone = channel.gather_objects(checkpoint_steps(run_dir, channel.rank))
    step = channel.broadcast_object(newest_common_step(everyone) if channel.rank == 0 else None)
    if step is None:
        raise SynthgradError(f"{run_dir} has no step with a checkpoint of every stage (the run stopped before its "
                             "first one); start it again (with {0})", "force")
    return torch.load(checkpoint_path(stage_dir(run_dir, channel.rank), step), map_location=device, weights_only=True)


def _complete_summary(channel: Channel, task: RankTask, summary: Optional[dict[str, Any]],
                      run_dir: Path) -> Optional[dict[str, Any]]:
    """Rank 0's summary with what needs every rank's totals: ``samples_per_s``, and each rank's processor
    time per training sample in microseconds, of the process (``cpu_us_per_sample``, from the engine's
    ``cpu_seconds``) and of its network thread (``network_cpu_us_per_sample``; ``None`` where unknown), over
    the training steps only: what to compare on a shared machine, where wall time also measures other jobs."""
    every_network_seconds = channel.gather_objects(task.network_seconds)
    if summary is None:
        return None
    samples = summary["steps"] * task.data.batch_size
    cpu_seconds = summary["cpu_seconds"] if isinstance(summary["cpu_seconds"], list) else [summary["cpu_seconds"]]

    def per_sample(seconds: Optional[float]) -> Optional[float]:
        return None if seconds is None else seconds * 1e6 / samples

    summary.update(samples_per_s=samples / max(summary["train_seconds"], 1e-9),
                   cpu_us_per_sample=[per_sample(seconds) for seconds in cpu_seconds],
                   network_cpu_us_per_sample=[per_sample(seconds) for seconds in every_network_seconds])
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary

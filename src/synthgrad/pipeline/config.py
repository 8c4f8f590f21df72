"""What a pipeline run is: the classifier experiment, how it is cut into stages, and how ranks meet.

Everything is checked here, before any process starts, so that a bad ``--stages``, ``--schedule`` or
``--micro-batches`` stops the command with one line instead of K tracebacks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from synthgrad.errors import SynthgradError
from synthgrad.experiments.classifier_config import ClassifierConfig, build_model, classifier_config_from_dict
from synthgrad.pipeline.stage import stage_groups
from synthgrad.engine.config import validate_train_config

SCHEDULES = ("auto", "unlocked", "lockstep", "gpipe", "1f1b")
"""``unlocked``: update-unlocked DNI; ``lockstep``: exact pipelined backprop; ``gpipe``/``1f1b``:
``torch.distributed.pipelining``'s schedules on the same stages; ``auto``: unlocked for dni/cdni,
lockstep for backprop."""
DEFAULT_TIMEOUT_S = 60.0
"""How long a rank waits for a message before it declares the sender dead or hung and exits."""


@dataclass
class PipelineConfig:
    """How a run is spread over processes: ``num_stages`` ranks, one stage each.

    ``max_staleness``: a synthesizer trains on the target for a step at most this many block updates
    after its prediction (``unlocked``). ``micro_batches``: each mini-batch is split into this many for
    ``lockstep``, ``gpipe`` and ``1f1b``. ``threads``: torch threads per rank (one simulated device each).
    """

    num_stages: int = 2
    schedule: str = "auto"
    max_staleness: int = 1
    micro_batches: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    threads: int = 1


@dataclass
class PipelineRun:
    """A classifier experiment trained as a pipeline; ``config.json`` holds ``asdict`` of it."""

    classifier: ClassifierConfig
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


def pipeline_run_from_dict(data: dict[str, Any]) -> PipelineRun:
    """The inverse of ``asdict`` on a ``PipelineRun``, e.g. for a run's ``config.json``."""
    return PipelineRun(classifier_config_from_dict(data["classifier"]), PipelineConfig(**data["pipeline"]))


def is_pipeline_config(data: dict[str, Any]) -> bool:
    """Whether a run's ``config.json`` describes a pipeline run."""
    return "pipeline" in data and "classifier" in data


def resolve_schedule(run: PipelineRun) -> str:
    """The schedule ``run`` uses (``auto`` resolved by its method)."""
    if run.pipeline.schedule != "auto":
        return run.pipeline.schedule
    return "lockstep" if run.classifier.method == "backprop" else "unlocked"


@dataclass(frozen=True)
class Rendezvous:
    """Where and as whom a rank joins: ``tcp://addr:port`` (or ``env://`` under torchrun, whose agent
    already serves the store on ``MASTER_PORT``), its ``rank`` of ``world_size`` and its ``local_rank``
    (the GPU it uses on its machine)."""

    addr: str
    port: int
    rank: int
    world_size: int
    local_rank: int = 0
    use_env: bool = False


def check_pipeline_run(run: PipelineRun, *, min_stages: int = 2) -> list[range]:
    """Raise ``SynthgradError`` naming the option at fault if ``run`` cannot be trained as a pipeline;
    returns the stages' block groups. ``min_stages=1`` admits the one-process run that benchmarks
    time single-process backprop with (the same clock as the pipelines')."""
    pipe, classifier = run.pipeline, run.classifier
    validate_train_config(classifier.train)  # e.g. stats_every and synth_every, which the schedules honour
    if pipe.schedule not in SCHEDULES:
        raise SynthgradError(f"--schedule {pipe.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if pipe.num_stages < min_stages:
        raise SynthgradError(f"--stages {pipe.num_stages}: a pipeline needs at least 2 stages "
                             "(leave --stages out to train in one process)")
    if classifier.method not in ("backprop", "dni", "cdni"):
        raise SynthgradError(f"--method {classifier.method} cannot be split into stages: use backprop, dni or cdni")
    if getattr(classifier, "forward_unlock", False) or getattr(classifier.train, "update_prob", 1.0) != 1.0:
        raise SynthgradError("--forward-unlock and --update-prob are for one process: leave them out with --stages")
    if classifier.train.on_divergence != "stop":
        raise SynthgradError(f"--on-divergence {classifier.train.on_divergence} is for one process: in a pipeline the "
                             "stages below have updated before a non-finite loss is seen, so no step can be skipped; "
                             "leave it out with --stages (every rank stops at the first non-finite interval)")
    schedule = resolve_schedule(run)
    if schedule == "unlocked" and classifier.method == "backprop":
        raise SynthgradError("--schedule unlocked needs synthesizers at the stage boundaries: "
                             "use --method dni or cdni, or --schedule lockstep/gpipe/1f1b for backprop")
    if schedule != "unlocked" and classifier.method != "backprop":
        raise SynthgradError(f"--schedule {schedule} is exact backprop and trains no synthesizers: "
                             f"use --method backprop, or --schedule unlocked for {classifier.method}")
    if pipe.micro_batches < 1 or classifier.train.batch_size % pipe.micro_batches:
        raise SynthgradError(f"--micro-batches {pipe.micro_batches} must divide --batch-size "
                             f"{classifier.train.batch_size}")
    if schedule == "unlocked" and pipe.micro_batches != 1:
        raise SynthgradError("--micro-batches is for lockstep, gpipe and 1f1b: the unlocked schedule fills the "
                             "pipeline with whole mini-batches, since no rank waits for a backward pass")
    if pipe.max_staleness < 0:
        raise SynthgradError(f"--max-staleness must be >= 0, got {pipe.max_staleness}")
    if pipe.timeout_s <= 0:
        raise SynthgradError(f"--timeout must be positive, got {pipe.timeout_s:g}")
    return stage_groups(build_model(classifier), pipe.num_stages)


def config_differences(mine: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested config dicts."""
    keys = sorted(set(mine) | set(theirs))
    differences = []
    for key in keys:
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key} ({a!r} vs {b!r})")
    return differences


def comparable_config(run: PipelineRun) -> dict[str, Any]:
    """The part of a run's config that every rank must share (where the data lies and whether progress
    is shown may differ between machines)."""
    data = asdict(run)
    data["classifier"]["train"].pop("progress")
    data["classifier"].pop("data_dir")
    return data

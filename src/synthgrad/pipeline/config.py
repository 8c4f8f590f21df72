"""How a model is spread over processes (``PipelineConfig``), how a rank joins them (``Rendezvous``), and the
checks that run before any process starts, so that a bad option stops a run with one line instead of K
tracebacks. Messages name the configuration fields (``num_stages``, ``schedule``, ...) through
``InvalidConfig``'s placeholders."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from synthgrad.engine.config import TrainConfig, validate_train_config
from synthgrad.errors import InvalidConfig

SCHEDULES = ("auto", "unlocked", "lockstep", "gpipe", "1f1b")
"""``unlocked``: update-unlocked DNI; ``lockstep``: exact pipelined backprop; ``gpipe``/``1f1b``:
``torch.distributed.pipelining``'s schedules on the same stages; ``auto``: unlocked for a model with
synthesizers at the stage boundaries, lockstep for one without."""
DEFAULT_TIMEOUT_S = 60.0
"""How long a rank waits for a message before it declares the sender dead or hung and exits."""


@dataclass
class PipelineConfig:
    """How a run is spread over processes: ``num_stages`` ranks, one stage each.

    ``max_staleness``: a synthesizer trains on the target of a step this many steps (block updates) after
    its prediction (``unlocked``). ``micro_batches``: each mini-batch is split into this many for
    ``lockstep``, ``gpipe`` and ``1f1b``. ``timeout_s``: how long a rank waits for a message before it names
    the sender as dead or hung. Each rank trains with ``TrainConfig.threads`` torch threads, one when unset
    (one simulated device each).
    """

    num_stages: int = 2
    schedule: str = "auto"
    max_staleness: int = 1
    micro_batches: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S


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


def resolve_schedule(schedule: str, has_synthesizers: bool) -> str:
    """The schedule that ``schedule`` names (``auto`` resolved by whether the model has synthesizers)."""
    if schedule != "auto":
        return schedule
    return "unlocked" if has_synthesizers else "lockstep"


def check_pipeline_config(config: PipelineConfig, train: TrainConfig, *, batch_size: int, has_synthesizers: bool,
                          min_stages: int = 2) -> str:
    """Raise ``InvalidConfig`` naming the field at fault if ``config`` and the engine's ``train`` cannot train
    a model (with or without synthesizers at the stage boundaries) on batches of ``batch_size``; returns the
    resolved schedule. ``min_stages=1`` admits the one-process run that benchmarks time single-process
    backprop with (on the same clock as the pipelines')."""
    validate_train_config(train)
    if config.schedule not in SCHEDULES:
        raise InvalidConfig(f"{{0}} {config.schedule!r}: choose one of {', '.join(SCHEDULES)}", "schedule")
    if config.num_stages < min_stages:
        raise InvalidConfig(f"{{0}} {config.num_stages}: a pipeline needs at least {min_stages} stages "
                            "(leave {0} out to train in one process)", "num_stages")
    schedule = resolve_schedule(config.schedule, has_synthesizers)
    if schedule == "unlocked" and not has_synthesizers:
        raise InvalidConfig("{0} unlocked needs synthesizers at the stage boundaries: give the model "
                            "synthesizers, or choose {0} lockstep, gpipe or 1f1b", "schedule")
    if schedule != "unlocked" and has_synthesizers:
        raise InvalidConfig(f"{{0}} {schedule} is exact backprop and trains no synthesizers: choose {{0}} "
                            "unlocked, or give it a model without synthesizers", "schedule")
    if config.micro_batches < 1 or batch_size % config.micro_batches:
        raise InvalidConfig(f"{{0}} {config.micro_batches} must divide {{1}} {batch_size}",
                            "micro_batches", "batch_size")
    if schedule == "unlocked" and config.micro_batches != 1:
        raise InvalidConfig("{0} is for lockstep, gpipe and 1f1b: the unlocked schedule fills the pipeline "
                            "with whole mini-batches, since no rank waits for a backward pass", "micro_batches")
    if train.on_divergence != "stop":
        raise InvalidConfig(f"{{0}} {train.on_divergence} is for one process: in a pipeline the stages below have "
                            "updated before a non-finite loss is seen, so no step can be skipped; leave {0} out with "
                            "{1} (every rank stops at the first non-finite interval)", "on_divergence", "num_stages")
    if config.max_staleness < 0:
        raise InvalidConfig(f"{{0}} must be >= 0, got {config.max_staleness}", "max_staleness")
    if config.timeout_s <= 0:
        raise InvalidConfig(f"{{0}} must be positive, got {config.timeout_s:g}", "timeout_s")
    return schedule


def config_differences(mine: Mapping[str, Any], theirs: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested config dicts, with both values."""
    differences = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differences += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key} ({a!r} vs {b!r})")
    return differences

"""``TrainConfig``: the knobs of the training engine, the same for every task (a classifier, a recurrent
task, a pipeline rank), and their check. What a task draws and how (batch size, data, context) belongs to
the task's own configuration."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from synthgrad.errors import InvalidConfig

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")
ON_DIVERGENCE = ("stop", "skip")
"""What a non-finite step does: stop the run (raise ``TrainingDiverged``), or skip that step."""


@dataclass
class TrainConfig:
    """How the engine trains any task.

    Length: ``steps`` when set, else ``epochs`` passes over the task's data (``Task.steps_per_epoch``).

    Learning rates: ``lr`` for the parameters that learn from the true gradient, ``decoupled_lr`` (``None``:
    ``lr``) for those that learn only from synthetic gradients (``ParameterGroups.decoupled``, e.g. the
    blocks below the top cut of a ``DecoupledSequential``), ``synth_lr`` for the synthesizers. Steps along a
    synthetic gradient are only as good as its direction: unconditioned DNI learns best when those blocks
    move more slowly than the block above them, which follows the true gradient.

    ``lr_schedule="cosine"`` anneals every rate to zero over the run: late in training the synthesizers'
    targets keep moving, and a decaying step keeps the final accuracy at the best epoch's. ``warmup_steps``
    scales every rate up linearly over the first n steps: Adam moves every weight by about its rate on its
    first steps, whatever the gradient's size, so a zero-initialised synthesizer output layer with a large
    fan-in jumps to outputs far larger than its targets, and the blocks below follow that noise.

    Records: a metrics record every ``log_every`` steps, an evaluation every ``eval_every`` steps (``None``:
    every epoch, or only at the end for a task without epochs); the synthesizers' loss and cosine are
    measured on every ``stats_every``-th step (measuring every step costs as much as a small synthesizer).
    ``checkpoint_every`` (a multiple of ``log_every``, so that no checkpoint falls inside a metrics interval
    of an uninterrupted run; 0: none) keeps the newest ``keep_checkpoints``.

    ``threads``: torch's intra-op threads while training (``None``: as they are). Small steps (batches of ten,
    an LSTM stepped one chunk at a time) lose more to a second thread's synchronisation than they gain.

    ``record_seconds``: every record also holds ``train/seconds``, the training clock so far, for curves
    against time (records of otherwise identical runs then differ).

    ``on_divergence``: a step with a non-finite loss or gradient ``"stop"``s the run, or is ``"skip"``ped
    with the synthesizers' rate halved (``synthgrad.engine.guard``). ``tensorboard``: also write the
    records as TensorBoard event files (needs the ``tensorboard`` package).
    """

    epochs: int = 10
    steps: Optional[int] = None
    lr: float = 1e-3
    synth_lr: float = 1e-3
    decoupled_lr: Optional[float] = None
    optimizer: str = "adam"
    momentum: float = 0.0
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    eval_every: Optional[int] = None
    log_every: int = 50
    stats_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    on_divergence: str = "stop"
    progress: bool = True
    tensorboard: bool = False
    record_seconds: bool = False
    threads: Optional[int] = None


def validate_train_config(config: TrainConfig) -> None:
    """Raise ``InvalidConfig`` naming the field (and the allowed values) if ``config`` cannot work."""
    for field, value, allowed in (("optimizer", config.optimizer, OPTIMIZERS),
                                  ("lr_schedule", config.lr_schedule, LR_SCHEDULES),
                                  ("on_divergence", config.on_divergence, ON_DIVERGENCE)):
        if value not in allowed:
            raise InvalidConfig(f"{{0}} must be one of {', '.join(allowed)}, got {value!r}", field)
    if config.steps is not None and config.steps <= 0:
        raise InvalidConfig(f"{{0}} must be positive (or None to train for epochs), got {config.steps}", "steps")
    for field in ("epochs", "log_every", "stats_every", "keep_checkpoints"):
        if getattr(config, field) <= 0:
            raise InvalidConfig(f"{{0}} must be positive, got {getattr(config, field)}", field)
    if config.threads is not None and config.threads <= 0:
        raise InvalidConfig(f"{{0}} must be positive (or None: as they are), got {config.threads}", "threads")
    if config.eval_every is not None and config.eval_every <= 0:
        raise InvalidConfig(f"{{0}} must be positive (or None: every epoch), got {config.eval_every}", "eval_every")
    for field, value in (("lr", config.lr), ("synth_lr", config.synth_lr), ("decoupled_lr", config.decoupled_lr)):
        if value is not None and value <= 0:
            raise InvalidConfig(f"{{0}} must be positive, got {value}", field)
    if config.checkpoint_every < 0:
        raise InvalidConfig(f"{{0}} must be >= 0 (0: no checkpoints), got {config.checkpoint_every}",
                            "checkpoint_every")
    if config.warmup_steps < 0:
        raise InvalidConfig(f"{{0}} must be >= 0 (0: no warm-up), got {config.warmup_steps}", "warmup_steps")
    if config.checkpoint_every % config.log_every:
        raise InvalidConfig(f"{{0}} {config.checkpoint_every} must be a multiple of {{1}} {config.log_every}, "
                            "so that a checkpoint never falls inside a metrics interval",
                            "checkpoint_every", "log_every")

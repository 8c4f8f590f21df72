"""What defines a recurrent run (DNI paper, arXiv 1608.05343, section 3.1): ``RNNConfig``, the engine's
defaults for the recurrent tasks, and the check of a configuration before any work."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Optional

from synthgrad.data.sequence_tasks import SEQUENCE_TASKS
from synthgrad.engine import TrainConfig
from synthgrad.engine.config import validate_train_config
from synthgrad.errors import InvalidConfig
from synthgrad.experiments.curriculum import SOLVED_BITS

RNN_METHODS = ("bptt", "dni", "cdni", "dni-aux")
RNN_TASKS = SEQUENCE_TASKS + ("charlm",)
DRY_RUN_STEPS = 3
LSTM_LR = 3e-3
"""Adam's rate for the LSTM and the auxiliary head."""
SYNTH_LR = 1e-2
"""The synthesizer's Adam rate: faster than the LSTM's, since the synthesizer must track targets that move
with the LSTM (docs/recurrent.md#the-defaults-and-why)."""
CHARLM_EVAL_EVERY = 250
"""Windows between the language model's validations (each scores the whole validation tail)."""


def default_train_config(task: str) -> TrainConfig:
    """The engine's settings for a recurrent ``task``: Adam at ``LSTM_LR`` for the LSTM and the auxiliary
    head, ``SYNTH_LR`` for the synthesizer, a constant rate, 4000 updates (batches, or windows of text), a
    checkpoint every 1000 (the newest two kept), one thread (a small LSTM stepped one chunk at a time loses
    more to a second thread than it gains). Copy / Repeat Copy records and evaluates every 50 batches; the
    language model records at each of its evaluations, every ``CHARLM_EVAL_EVERY`` windows."""
    every = CHARLM_EVAL_EVERY if task == "charlm" else 50
    return TrainConfig(steps=4000, lr=LSTM_LR, synth_lr=SYNTH_LR, lr_schedule="constant", log_every=every,
                       eval_every=every, checkpoint_every=1000, keep_checkpoints=2, threads=1)


@dataclass
class RNNConfig:
    """Everything that defines a recurrent run; written to ``config.json`` as resolved. ``train`` holds the
    engine's knobs (``None``: ``default_train_config(task)``); the fields here say what is trained and how
    its batches are drawn."""

    task: str = "copy"
    method: str = "dni"
    truncation: int = 3
    hidden_dim: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    """Dropout on the LSTM's outputs on their way up (``LSTMCore``); the state is never dropped."""
    synth_layers: int = 0
    """Hidden layers of the synthesizer (0: a zero-initialised linear map of the state)."""
    synth_width: int = 256
    squash_cell: bool = False
    """The synthesizer reads ``(h, tanh(c))`` (``synthgrad.recurrent.SquashedCellInput``): needed on an
    endless text stream, where the cell state drifts to norms of 30-600; off for Copy / Repeat Copy, whose
    sequences start from the zero state (and whose table was measured without it)."""
    target_decay: float = 1.0
    """lambda, the weight of the next boundary's synthetic gradient in the bootstrapped target
    (``synthgrad.recurrent.backward_through_chunks``); 1 is the paper."""
    aux_weight: float = 0.1
    """Weight of the DNI+Aux loss (predicting the next boundary's synthetic gradient) on the core. At 1.0
    it swamped the task on Copy (length 4, T=3: 7.9 bits per character after 2000 batches, DNI 5.3)."""
    batch_size: int = 32
    clip_norm: float = 0.0
    """Gradient-norm clip of the core's parameters per update (0: none). A clip at 1.0 slowed Copy down."""
    seed: int = 0
    # Copy / Repeat Copy
    threshold: float = SOLVED_BITS
    curriculum_window: int = 10
    max_repeats: int = 3
    max_length: int = 200
    """Stop once this length is solved."""
    # charlm
    text: str = ""
    window: int = 128
    """Characters of each stream per update, the same for every T (a multiple of ``truncation``)."""
    eval_chars: int = 0
    """Validation characters scored per evaluation, from the start of the tail (0: all of it)."""
    device: str = "cpu"
    """Where the LSTM, its synthesizers and the batches live (``cpu``, ``cuda``, ``cuda:1``)."""
    dry_run: bool = False
    """A smoke test: ``DRY_RUN_STEPS`` updates, each recorded and evaluated, on little text."""
    train: Optional[TrainConfig] = None

    def __post_init__(self) -> None:
        if self.train is None:
            self.train = default_train_config(self.task)


def rnn_config(task: str = "copy", **options: Any) -> RNNConfig:
    """An ``RNNConfig`` from flat options: ``TrainConfig`` fields go to ``train`` (over the task's defaults),
    the others to the ``RNNConfig`` itself, so that command lines and benchmarks can name any of them alike.

    What is not given follows what is: Copy / Repeat Copy evaluate at every record (``eval_every`` =
    ``log_every``), the language model records at every evaluation (``log_every`` = ``eval_every``). A
    ``checkpoint_every`` is rounded up to a multiple of ``log_every``: the checkpoint falls on the first
    record at least that many updates after the last one."""
    train_fields = {item.name for item in fields(TrainConfig)}
    train = {key: value for key, value in options.items() if key in train_fields}
    defaults = default_train_config(task)
    if task == "charlm":
        train.setdefault("log_every", train.get("eval_every", defaults.eval_every))
    else:
        train.setdefault("eval_every", train.get("log_every", defaults.log_every))
    train_config = replace(defaults, **train)
    if train_config.log_every > 0 and train_config.checkpoint_every > 0:
        records = math.ceil(train_config.checkpoint_every / train_config.log_every)
        train_config.checkpoint_every = records * train_config.log_every
    return RNNConfig(task=task, **{key: value for key, value in options.items() if key not in train_fields},
                     train=train_config)


def rnn_config_from_dict(data: dict[str, Any]) -> RNNConfig:
    """The inverse of ``asdict`` on an ``RNNConfig``, e.g. for a run's ``config.json``."""
    return RNNConfig(**{**data, "train": TrainConfig(**data["train"])})


def validate_rnn_config(config: RNNConfig) -> None:
    """Raise ``InvalidConfig`` naming the fields at fault if ``config`` cannot work (the ``TrainConfig``
    included); no data is read."""
    validate_train_config(config.train)
    for field, value, allowed in (("task", config.task, RNN_TASKS), ("method", config.method, RNN_METHODS)):
        if value not in allowed:
            raise InvalidConfig(f"{{0}} must be one of {', '.join(allowed)}, got {value!r}", field)
    for field in ("truncation", "hidden_dim", "num_layers", "synth_width", "batch_size", "threshold",
                  "curriculum_window", "max_repeats", "max_length", "window", "aux_weight"):
        if getattr(config, field) <= 0:
            raise InvalidConfig(f"{{0}} must be positive, got {getattr(config, field)}", field)
    for field in ("synth_layers", "clip_norm", "eval_chars"):
        if getattr(config, field) < 0:
            raise InvalidConfig(f"{{0}} must be >= 0, got {getattr(config, field)}", field)
    if not 0.0 <= config.dropout < 1.0:
        raise InvalidConfig(f"{{0}} must be in [0, 1), got {config.dropout}", "dropout")
    if not 0.0 <= config.target_decay <= 1.0:
        raise InvalidConfig(f"{{0}} must be in [0, 1], got {config.target_decay}", "target_decay")
    if config.task == "charlm" and config.window % config.truncation:
        raise InvalidConfig(f"{{0}} {config.window} must be a multiple of {{1}} {config.truncation}",
                            "window", "truncation")

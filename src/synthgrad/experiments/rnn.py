"""Recurrent experiments of the DNI paper (arXiv 1608.05343, section 3.1), run on the training engine: Copy
and Repeat Copy with a length curriculum (``SequenceTask``) and character-level language modelling
(``CharLMTask``), each trained by truncated BPTT over chunks of T steps with the method ``RNNConfig`` names.

A run directory holds ``config.json``, ``metrics.jsonl``, checkpoints, ``final.pt`` and ``summary.json``:
``max_length_solved`` for Copy / Repeat Copy, ``val_bpc`` and ``chars_seen`` for the language model, and
the engine's ``steps``, ``train_seconds`` and ``cpu_seconds``.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Optional

from synthgrad.data.text import CharCorpus, load_text
from synthgrad.engine import Task, train
from synthgrad.engine.records import CONFIG_FILE, write_json
from synthgrad.experiments.charlm import CharLMTask
from synthgrad.experiments.rnn_config import DRY_RUN_STEPS, RNN_METHODS, RNN_TASKS, RNNConfig, validate_rnn_config
from synthgrad.experiments.sequence_task import SequenceTask

__all__ = ["RNN_METHODS", "RNN_TASKS", "RNNConfig", "build_rnn_task", "run_rnn_experiment"]

DRY_RUN_TEXT = (20_000, 2_000)
"""Training and validation characters of a dry run's language model."""


def build_rnn_task(config: RNNConfig, corpus: Optional[CharCorpus] = None) -> Task:
    """The task ``config.task`` names, its model seeded by ``config.seed``; the language model reads
    ``corpus``, else ``config.text`` (a dry run only the start of each split)."""
    if config.task != "charlm":
        return SequenceTask(config)
    corpus = corpus if corpus is not None else load_text(Path(config.text))
    if config.dry_run:
        train_chars, validation_chars = DRY_RUN_TEXT
        corpus = CharCorpus(corpus.vocabulary, corpus.train[:train_chars], corpus.validation[:validation_chars])
    return CharLMTask(config, corpus)


def run_rnn_experiment(config: RNNConfig, run_dir: Path, *, corpus: Optional[CharCorpus] = None,
                       on_record: Optional[Callable[[dict[str, Any]], None]] = None,
                       resume: Optional[dict[str, Any]] = None,
                       stop_requested: Optional[Callable[[], bool]] = None) -> dict[str, Any]:
    """Train the recurrent run ``config`` describes with ``synthgrad.engine.train``, writing ``config.json``
    and the engine's files into ``run_dir``; returns the summary. A dry run takes ``DRY_RUN_STEPS`` updates,
    each recorded and evaluated.

    Args:
        corpus: the language model's text, already loaded (default: ``config.text``).
        on_record, stop_requested: as in ``synthgrad.engine.train``.
        resume: a checkpoint of this run to continue from (``synthgrad.checkpoints.load_latest_checkpoint``);
            the result is the uninterrupted run's, bit for bit on the CPU.

    Raises ``InvalidConfig`` naming the fields at fault before anything is written."""
    validate_rnn_config(config)
    task = build_rnn_task(config, corpus)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, asdict(config))
    settings = config.train
    if config.dry_run:
        settings = replace(settings, steps=DRY_RUN_STEPS, log_every=1, eval_every=1, checkpoint_every=0)
    return train(task, settings, run_dir, on_record=on_record, resume=resume, stop_requested=stop_requested)

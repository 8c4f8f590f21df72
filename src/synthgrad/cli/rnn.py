"""``synthgrad rnn``: an LSTM trained by truncated BPTT with synthetic gradients at chunk boundaries."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from synthgrad.checkpoints import load_latest_checkpoint
from synthgrad.cli.arguments import (DATA_ENV, add_device_argument, dropout_rate, non_negative_int, positive,
                                     prepare_run_dir, probability, resolve_device)
from synthgrad.engine.config import ON_DIVERGENCE
from synthgrad.engine.guard import SKIP_SYNTH_LR_FACTOR
from synthgrad.engine.records import CONFIG_FILE, SUMMARY_FILE
from synthgrad.errors import InvalidConfig, SynthgradError
from synthgrad.experiments.rnn import RNN_METHODS, RNNConfig, run_rnn_experiment
from synthgrad.experiments.rnn_config import rnn_config, rnn_config_from_dict, validate_rnn_config
from synthgrad.recurrent_plots import plot_rnn_run

TINY_SHAKESPEARE = "tinyshakespeare/input.txt"
"""Where ``charlm`` looks for its default text under ``$SYNTHGRAD_DATA``."""
TASK_HELP = {"copy": "copy a sequence of random 8-bit patterns, with a length curriculum",
             "repeat-copy": "copy it R times over, with a length curriculum",
             "charlm": "character-level language model of a text file, bits per character"}


def task_defaults(task: str) -> RNNConfig:
    """The configuration ``synthgrad rnn TASK`` starts from: the language model's LSTM is larger (256 units),
    its chunks longer (T=8) and its synthesizer reads the squashed cell state."""
    is_charlm = task == "charlm"
    return rnn_config(task, truncation=8 if is_charlm else RNNConfig.truncation,
                      hidden_dim=256 if is_charlm else RNNConfig.hidden_dim, squash_cell=is_charlm)


def add_rnn_parser(commands: Any) -> None:
    rnn = commands.add_parser("rnn", help="an LSTM trained by truncated BPTT, with synthetic gradients at "
                              "chunk boundaries (Copy, Repeat Copy, character-level language model)")
    tasks = rnn.add_subparsers(dest="task", required=True, metavar="TASK")
    for task, help_text in TASK_HELP.items():
        parser = tasks.add_parser(task, help=help_text)
        _add_model_arguments(parser, task_defaults(task))
        _add_training_arguments(parser, task_defaults(task))
        parser.add_argument("--seed", type=int, default=0)
        add_device_argument(parser)
        parser.add_argument("--out", type=Path, help="run directory (default runs/rnn-<task>-<method>-T<T>-<time>)")
        parser.add_argument("--force", action="store_true", help="write into --out even if it holds a finished run")
        parser.add_argument("--dry-run", action="store_true", help="three updates on little data: a smoke test")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument("--tensorboard", action="store_true",
                            help="also write the metrics as TensorBoard event files into RUN_DIR/tensorboard "
                            "(pip install 'synthgrad[tensorboard]')")


def _add_model_arguments(parser: argparse.ArgumentParser, defaults: RNNConfig) -> None:
    parser.add_argument("--truncation", "-T", type=positive(int), default=defaults.truncation,
                        help=f"steps per BPTT chunk (default {defaults.truncation})")
    parser.add_argument("--method", choices=RNN_METHODS, default=defaults.method,
                        help="bptt (truncated BPTT), dni (a synthesizer at each chunk boundary), cdni (one "
                        "that also reads the next chunk's inputs and targets) or dni-aux (dni and the "
                        "auxiliary task); default dni")
    parser.add_argument("--hidden-dim", type=positive(int), default=defaults.hidden_dim, help="LSTM units")
    parser.add_argument("--layers", type=positive(int), default=defaults.num_layers, help="LSTM layers")
    parser.add_argument("--dropout", type=dropout_rate, default=defaults.dropout,
                        help="dropout on the LSTM's outputs (never on its state); default 0")
    parser.add_argument("--synth-layers", type=non_negative_int, default=defaults.synth_layers,
                        help="hidden layers of the synthesizer (0: linear, the default)")
    parser.add_argument("--synth-width", type=positive(int), default=defaults.synth_width,
                        help=f"hidden units of the synthesizer's layers (default {defaults.synth_width})")
    parser.add_argument("--squash-cell", action=argparse.BooleanOptionalAction, default=defaults.squash_cell,
                        help="the synthesizer reads (h, tanh c) rather than the raw cell state "
                        f"(default {'on' if defaults.squash_cell else 'off'} for {defaults.task})")
    parser.add_argument("--target-decay", type=probability, default=defaults.target_decay,
                        help="lambda: weight of the next boundary's synthetic gradient in the bootstrapped "
                        f"target (default {defaults.target_decay}; 1 is the paper, 0 the next chunk's loss alone)")
    parser.add_argument("--aux-weight", type=positive(float), default=defaults.aux_weight,
                        help="weight of the DNI+Aux loss (dni-aux only)")
    if defaults.task == "repeat-copy":
        parser.add_argument("--max-repeats", type=positive(int), default=defaults.max_repeats,
                            help="repeat counts are drawn from 1..N")
    if defaults.task == "charlm":
        parser.add_argument("--text", type=Path, help="a UTF-8 text file: first 90%% trains, last 10%% "
                            f"validates (default ${DATA_ENV}/{TINY_SHAKESPEARE})")
        parser.add_argument("--window", type=positive(int), default=defaults.window,
                            help="characters per stream and update, a multiple of --truncation")


def _add_training_arguments(parser: argparse.ArgumentParser, defaults: RNNConfig) -> None:
    train, is_charlm = defaults.train, defaults.task == "charlm"
    parser.add_argument("--steps", type=positive(int), default=train.steps,
                        help=f"updates: batches or text windows (default {train.steps})")
    parser.add_argument("--batch-size", type=positive(int), default=defaults.batch_size)
    parser.add_argument("--lr", type=positive(float), default=train.lr)
    parser.add_argument("--synth-lr", type=positive(float), default=train.synth_lr)
    parser.add_argument("--log-every", type=positive(int), default=None if is_charlm else train.log_every,
                        help="write a metrics record every N updates (default "
                        + ("at every evaluation)" if is_charlm else f"{train.log_every}, each with an evaluation)"))
    if is_charlm:
        parser.add_argument("--eval-every", type=positive(int), default=train.eval_every,
                            help=f"validate every N updates (default {train.eval_every})")
    parser.add_argument("--checkpoint-every", type=non_negative_int, default=train.checkpoint_every,
                        help="a resumable checkpoint at the first record this many updates after the last "
                        f"(default {train.checkpoint_every}; 0: none)")
    parser.add_argument("--on-divergence", choices=ON_DIVERGENCE,
                        help="on a non-finite loss or gradient: stop (exit status 3), or skip the step and "
                        f"multiply the synthesizer's learning rate by {SKIP_SYNTH_LR_FACTOR:g} (default "
                        f"{train.on_divergence}; with --resume: as the run was started)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out from its newest readable checkpoint, with "
                        "the options it was started with (others but --on-divergence are ignored)")


def default_text(text: Optional[Path], environ: dict[str, str]) -> Path:
    if text is not None:
        return text
    if environ.get(DATA_ENV):
        return Path(environ[DATA_ENV]).expanduser() / TINY_SHAKESPEARE
    raise SynthgradError(f"no text to model: pass --text FILE (or set ${DATA_ENV} to a directory holding "
                         f"{TINY_SHAKESPEARE})")


def _new_config(args: argparse.Namespace, environ: dict[str, str]) -> RNNConfig:
    """The configuration the options of ``synthgrad rnn TASK`` describe."""
    task = args.task
    options: dict[str, Any] = dict(
        method=args.method, truncation=args.truncation, hidden_dim=args.hidden_dim, num_layers=args.layers,
        dropout=args.dropout, synth_layers=args.synth_layers, synth_width=args.synth_width,
        squash_cell=args.squash_cell, target_decay=args.target_decay, aux_weight=args.aux_weight,
        batch_size=args.batch_size, seed=args.seed, device=resolve_device(args.device), dry_run=args.dry_run,
        steps=args.steps, lr=args.lr, synth_lr=args.synth_lr, checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress, tensorboard=args.tensorboard)
    for field in ("log_every", "on_divergence"):
        if getattr(args, field) is not None:
            options[field] = getattr(args, field)
    if task == "repeat-copy":
        options["max_repeats"] = args.max_repeats
    if task == "charlm":
        options.update(text=str(default_text(args.text, environ)), window=args.window, eval_every=args.eval_every)
    config = rnn_config(task, **options)
    validate_rnn_config(config)
    return config


def is_rnn_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a ``synthgrad rnn`` run (its ``config.json`` has a ``truncation``)."""
    try:
        return "truncation" in json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False


def resume_rnn(run_dir: Path, *, progress: bool, task: Optional[str] = None,
               on_divergence: Optional[str] = None) -> None:
    """Continue the interrupted recurrent run in ``run_dir`` (of ``task``, when given) from its newest
    readable checkpoint, with the options it was started with (and ``on_divergence`` from here on, when
    given); then report it as a new run is reported."""
    path = run_dir / CONFIG_FILE
    try:
        config = rnn_config_from_dict(json.loads(path.read_text()))
        validate_rnn_config(config)
    except OSError as error:
        raise SynthgradError(f"cannot read {path}: {error}; pass the --out directory of a synthgrad rnn run") from None
    except InvalidConfig as error:
        raise SynthgradError(f"{path} is not a valid run configuration: {error}; start the run again") from None
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise SynthgradError(f"{path} is not a synthgrad rnn run configuration ({type(error).__name__}: {error}); "
                             "start the run again") from None
    if task is not None and config.task != task:
        raise SynthgradError(f"{run_dir} holds a {config.task!r} run, not {task!r}; resume it with "
                             f"synthgrad rnn {config.task} --resume --out {run_dir}")
    if (run_dir / SUMMARY_FILE).is_file():
        raise SynthgradError(f"{run_dir} holds a finished run; there is nothing to resume")
    checkpoint = load_latest_checkpoint(run_dir)
    if checkpoint is None:
        raise SynthgradError(f"{run_dir} has no readable checkpoint to resume from (the run stopped before its "
                             "first one, or every one is corrupt); start the run again without --resume")
    config.train.progress = progress
    config.train.on_divergence = on_divergence or config.train.on_divergence
    print(f"resuming {run_dir} from step {checkpoint['step']}", file=sys.stderr)
    _run(config, run_dir, checkpoint)


def command_rnn(args: argparse.Namespace, environ: dict[str, str]) -> None:
    if args.resume:
        if args.out is None:
            raise SynthgradError("--resume needs --out RUN_DIR, the directory of the run to continue")
        return resume_rnn(args.out, progress=not args.no_progress, task=args.task, on_divergence=args.on_divergence)
    config = _new_config(args, environ)
    _run(config, prepare_run_dir(args.out, f"rnn-{args.task}-{args.method}-T{args.truncation}", args.force))


def _run(config: RNNConfig, run_dir: Path, resume: Optional[dict[str, Any]] = None) -> None:
    """Run (or, from the checkpoint ``resume``, continue) ``config`` in ``run_dir``, draw its figure and say
    how it ended; one path for both, so that a resumed run does exactly what the first one did."""
    summary = run_rnn_experiment(config, run_dir, resume=resume)
    figures = plot_rnn_run(run_dir)
    if config.task == "charlm":
        print(f"validation {summary['val_bpc']:.3f} bits per character after {summary['chars_seen']} characters "
              f"({summary['train_seconds']:.1f} s of training)")
    else:
        print(f"longest length solved: {summary['max_length_solved']} in {summary['steps']} steps "
              f"({summary['train_seconds']:.1f} s of training)")
    print(f"run directory: {run_dir} (figures: {', '.join(path.name for path in figures)})")

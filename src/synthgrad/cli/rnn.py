"""``synthgrad rnn``: an LSTM trained by truncated BPTT with synthetic gradients at chunk boundaries."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional


from synthgrad.cli.arguments import (DATA_ENV, add_device_argument, dropout_rate, non_negative_int, positive,
                                     prepare_run_dir, probability, resolve_device)
from synthgrad.errors import SynthgradError
from synthgrad.experiments.rnn import RNN_METHODS, RNNConfig, run_rnn_experiment
from synthgrad.engine.records import CONFIG_FILE, SUMMARY_FILE, read_json
from synthgrad.recurrent_plots import plot_rnn_run


TINY_SHAKESPEARE = "tinyshakespeare/input.txt"
"""Where ``charlm`` looks for its default text under ``$SYNTHGRAD_DATA``."""


def add_rnn_parser(commands: Any) -> None:
    rnn = commands.add_parser("rnn", help="an LSTM trained by truncated BPTT, with synthetic gradients at "
                              "chunk boundaries (Copy, Repeat Copy, character-level language model)")
    tasks = rnn.add_subparsers(dest="task", required=True, metavar="TASK")
    for task, help_text in (("copy", "copy a sequence of random 8-bit patterns, with a length curriculum"),
                            ("repeat-copy", "copy it R times over, with a length curriculum"),
                            ("charlm", "character-level language model of a text file, bits per character")):
        defaults = RNNConfig(task=task, truncation=8 if task == "charlm" else RNNConfig.truncation,
                             hidden_dim=256 if task == "charlm" else RNNConfig.hidden_dim,
                             squash_cell=task == "charlm")
        parser = tasks.add_parser(task, help=help_text)
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
        parser.add_argument("--steps", type=positive(int), default=defaults.steps,
                            help=f"updates: batches or text windows (default {defaults.steps})")
        parser.add_argument("--batch-size", type=positive(int), default=defaults.batch_size)
        parser.add_argument("--lr", type=positive(float), default=defaults.lr)
        parser.add_argument("--synth-lr", type=positive(float), default=defaults.synth_lr)
        parser.add_argument("--squash-cell", action=argparse.BooleanOptionalAction, default=defaults.squash_cell,
                            help="the synthesizer reads (h, tanh c) rather than the raw cell state "
                            f"(default {'on' if defaults.squash_cell else 'off'} for {task})")
        parser.add_argument("--target-decay", type=probability, default=defaults.target_decay,
                            help="lambda: weight of the next boundary's synthetic gradient in the bootstrapped "
                            f"target (default {defaults.target_decay}; 1 is the paper, 0 the next chunk's loss alone)")
        parser.add_argument("--aux-weight", type=positive(float), default=defaults.aux_weight,
                            help="weight of the DNI+Aux loss (dni-aux only)")
        parser.add_argument("--log-every", type=positive(int), default=defaults.log_every)
        parser.add_argument("--checkpoint-every", type=non_negative_int, default=defaults.checkpoint_every,
                            help="a resumable checkpoint at the first log or evaluation this many updates after "
                            f"the last (default {defaults.checkpoint_every}; 0: none)")
        parser.add_argument("--resume", action="store_true",
                            help="continue the interrupted run in --out from its newest checkpoint, with the "
                            "options it was started with (other options are ignored)")
        if task == "repeat-copy":
            parser.add_argument("--max-repeats", type=positive(int), default=defaults.max_repeats,
                                help="repeat counts are drawn from 1..N")
        if task == "charlm":
            parser.add_argument("--text", type=Path, help="a UTF-8 text file: first 90%% trains, last 10%% "
                                f"validates (default ${DATA_ENV}/{TINY_SHAKESPEARE})")
            parser.add_argument("--window", type=positive(int), default=defaults.window,
                                help="characters per stream and update, a multiple of --truncation")
            parser.add_argument("--eval-every", type=positive(int), default=defaults.eval_every,
                                help="validate every N updates")
        parser.add_argument("--seed", type=int, default=0)
        add_device_argument(parser)
        parser.add_argument("--out", type=Path, help="run directory (default runs/rnn-<task>-<method>-T<T>-<time>)")
        parser.add_argument("--force", action="store_true", help="write into --out even if it holds a finished run")
        parser.add_argument("--dry-run", action="store_true", help="three updates on little data: a smoke test")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_text(text: Optional[Path], environ: dict[str, str]) -> Path:
    if text is not None:
        return text
    if environ.get(DATA_ENV):
        return Path(environ[DATA_ENV]).expanduser() / TINY_SHAKESPEARE
    raise SynthgradError(f"no text to model: pass --text FILE (or set ${DATA_ENV} to a directory holding "
                         f"{TINY_SHAKESPEARE})")


def _resumed_config(args: argparse.Namespace) -> RNNConfig:
    """The configuration of the run in ``--out`` that ``--resume`` continues."""
    if args.out is None:
        raise SynthgradError("--resume needs --out RUN_DIR, the directory of the run to continue")
    saved = read_json(args.out / CONFIG_FILE)
    if saved.get("task") != args.task:
        raise SynthgradError(f"{args.out} holds a {saved.get('task')!r} run, not {args.task!r}; resume it with "
                             f"synthgrad rnn {saved.get('task')} --resume --out {args.out}")
    if (args.out / SUMMARY_FILE).is_file():
        raise SynthgradError(f"{args.out} holds a finished run; there is nothing to resume")
    return replace(RNNConfig(**saved), progress=not args.no_progress)


def command_rnn(args: argparse.Namespace, environ: dict[str, str]) -> None:
    task = args.task
    config = _resumed_config(args) if args.resume else RNNConfig(
        task=task, method=args.method, truncation=args.truncation, hidden_dim=args.hidden_dim,
        num_layers=args.layers, dropout=args.dropout, synth_layers=args.synth_layers, synth_width=args.synth_width,
        squash_cell=args.squash_cell,
        target_decay=args.target_decay, aux_weight=args.aux_weight, batch_size=args.batch_size, lr=args.lr,
        synth_lr=args.synth_lr, steps=args.steps, seed=args.seed, log_every=1 if args.dry_run else args.log_every,
        checkpoint_every=args.checkpoint_every, device=resolve_device(args.device), dry_run=args.dry_run,
        progress=not args.no_progress,
    )
    if task == "repeat-copy" and not args.resume:
        config.max_repeats = args.max_repeats
    if task == "charlm" and not args.resume:
        config.text = str(default_text(args.text, environ))
        config.window, config.eval_every = args.window, args.eval_every
        if args.window % args.truncation:
            raise SynthgradError(f"--window {args.window} must be a multiple of --truncation {args.truncation}")
    run_dir = args.out if args.resume else prepare_run_dir(args.out, f"rnn-{task}-{args.method}-T{args.truncation}",
                                                           args.force)
    summary = run_rnn_experiment(config, run_dir, resume=args.resume)
    figures = plot_rnn_run(run_dir)
    if task == "charlm":
        print(f"validation {summary['val_bpc']:.3f} bits per character after {summary['chars_seen']} characters "
              f"({summary['train_seconds']:.1f} s of training)")
    else:
        print(f"longest length solved: {summary['max_length_solved']} in {summary['steps']} steps "
              f"({summary['train_seconds']:.1f} s of training)")
    print(f"run directory: {run_dir} (figures: {', '.join(path.name for path in figures)})")

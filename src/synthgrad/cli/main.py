"""The ``synthgrad`` console script: the parser of every command, and exit statuses. A mistake in the
input prints one line and exits with status 2; it never shows a traceback."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from synthgrad import __version__
from synthgrad.cli.arguments import OneLineErrorParser, set_command_parser
from synthgrad.cli.bench import add_bench_parser, command_bench
from synthgrad.cli.classifier import add_classifier_parsers, command_gist, command_train
from synthgrad.cli.resume import command_resume, resume_flag
from synthgrad.cli.rnn import add_rnn_parser, command_rnn, is_rnn_run
from synthgrad.engine.config import ON_DIVERGENCE
from synthgrad.errors import PipelineFailure, SynthgradError, TrainingDiverged, TrainingInterrupted
from synthgrad.pipeline.launch import FAILED_STATUS
from synthgrad.plots import plot_run
from synthgrad.recurrent_plots import plot_rnn_run

DIVERGED_STATUS = 3
"""Exit status of a run stopped because it diverged (2 is for bad input)."""


class _FlagNames(dict):
    """How the command line spells a config field: as the flag that sets it (``batch_size``: ``--batch-size``),
    where the flag is not the field's name, as this dict says."""

    def get(self, field: str, default: Optional[str] = None) -> str:
        return super().get(field) or "--" + field.replace("_", "-")


_FLAGS = _FlagNames(num_stages="--stages", timeout_s="--timeout", num_layers="--layers")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="synthgrad", description="Train networks with synthetic gradients "
                                     "(Decoupled Neural Interfaces, arXiv 1608.05343).")
    # torch's version too: which build a user runs (CPU or CUDA, and its release) is half of a bug report
    parser.add_argument("--version", action="version", version=f"synthgrad {__version__} (torch {torch.__version__})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_classifier_parsers(commands)
    _add_resume_parser(commands)
    add_rnn_parser(commands)
    add_bench_parser(commands)
    plot = commands.add_parser("plot", help="draw a run directory's curves and figures to PNG files")
    plot.add_argument("run_dir", type=Path, help="a directory written by synthgrad train or gist")
    for command in commands.choices.values():
        set_command_parser(command)
    return parser


def _add_resume_parser(commands: Any) -> None:
    resume = commands.add_parser("resume", help="continue an interrupted run from its newest readable checkpoint")
    resume.add_argument("run_dir", type=Path, help="the run directory (--out) of the interrupted run")
    resume.add_argument("--no-progress", action="store_true", help="no progress bar")
    resume.add_argument("--on-divergence", choices=ON_DIVERGENCE,
                        help="change what a non-finite step does from here on (default: as the run was started)")


def command_plot(args: argparse.Namespace, environ: dict[str, str]) -> None:
    for path in (plot_rnn_run if is_rnn_run(args.run_dir) else plot_run)(args.run_dir):
        print(path)


COMMANDS = {"train": command_train, "gist": command_gist, "resume": command_resume, "bench": command_bench,
            "rnn": command_rnn, "plot": command_plot}


def main(argv: Optional[Sequence[str]] = None, environ: Optional[dict[str, str]] = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    is_resumed = args.command in ("train", "gist") and args.resume
    command = resume_flag if is_resumed else COMMANDS[args.command]
    try:
        command(args, dict(os.environ) if environ is None else environ)
    except TrainingInterrupted as interrupted:
        print(f"synthgrad {args.command}: {interrupted}; continue with: synthgrad resume "
              f"{interrupted.run_dir}", file=sys.stderr)
        return 130
    except PipelineFailure as error:
        print(f"synthgrad {args.command}: error: {error}", file=sys.stderr)
        return FAILED_STATUS
    except TrainingDiverged as error:
        print(f"synthgrad {args.command}: error: {error.spelled(_FLAGS)}", file=sys.stderr)
        return DIVERGED_STATUS
    except SynthgradError as error:  # the library's messages name config fields: spelled here as flags
        print(f"synthgrad {args.command}: error: {error.spelled(_FLAGS)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synthgrad {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0

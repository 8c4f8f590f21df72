"""The ``synthgrad`` console script: the parser of every command, and exit statuses. A mistake in the
input prints one line and exits with status 2; it never shows a traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from synthgrad import __version__
from synthgrad.cli.arguments import OneLineErrorParser
from synthgrad.cli.bench import add_bench_parser, command_bench
from synthgrad.cli.classifier import add_classifier_parsers, command_gist, command_resume, command_train
from synthgrad.cli.rnn import add_rnn_parser, command_rnn
from synthgrad.divergence import TrainingDiverged
from synthgrad.errors import InvalidConfig, SynthgradError
from synthgrad.metrics import CONFIG_FILE
from synthgrad.pipeline.comm import PipelineFailure
from synthgrad.pipeline.launch import FAILED_STATUS
from synthgrad.plots import plot_run
from synthgrad.recurrent_plots import plot_rnn_run
from synthgrad.trainer import TrainingInterrupted


DIVERGED_STATUS = 3
"""Exit status of a run stopped because it diverged (2 is for bad input)."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="synthgrad", description="Train networks with synthetic gradients "
                                     "(Decoupled Neural Interfaces, arXiv 1608.05343).")
    # torch's version too: which build a user runs (CPU or CUDA, and its release) is half of a bug report
    parser.add_argument("--version", action="version", version=f"synthgrad {__version__} (torch {torch.__version__})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_classifier_parsers(commands)
    add_rnn_parser(commands)
    add_bench_parser(commands)
    plot = commands.add_parser("plot", help="draw a run directory's curves and figures to PNG files")
    plot.add_argument("run_dir", type=Path, help="a directory written by synthgrad train or gist")

    return parser


def is_rnn_run(run_dir: Path) -> bool:
    try:
        return "truncation" in json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False


def command_plot(args: argparse.Namespace, environ: dict[str, str]) -> None:
    for path in (plot_rnn_run if is_rnn_run(args.run_dir) else plot_run)(args.run_dir):
        print(path)


COMMANDS = {"train": command_train, "gist": command_gist, "resume": command_resume, "bench": command_bench,
            "rnn": command_rnn, "plot": command_plot}


def main(argv: Optional[Sequence[str]] = None, environ: Optional[dict[str, str]] = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args, dict(os.environ) if environ is None else environ)
    except TrainingInterrupted as interrupted:
        print(f"synthgrad {args.command}: {interrupted}; continue with: synthgrad resume "
              f"{interrupted.run_dir}", file=sys.stderr)
        return 130
    except PipelineFailure as error:
        print(f"synthgrad {args.command}: error: {error}", file=sys.stderr)
        return FAILED_STATUS
    except TrainingDiverged as error:
        print(f"synthgrad {args.command}: error: {error}", file=sys.stderr)
        return DIVERGED_STATUS
    except InvalidConfig as error:  # the same checks as the library's, spelled with this command's flags
        flags = {name: "--" + name.replace("_", "-") for name in vars(args)}
        print(f"synthgrad {args.command}: error: {error.spelled(flags)}", file=sys.stderr)
        return 2
    except SynthgradError as error:
        print(f"synthgrad {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synthgrad {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0

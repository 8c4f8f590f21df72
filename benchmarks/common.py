"""What the benchmark scripts share: where the data is, how to run one configuration, table output."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from synthgrad.cli import resolve_data_dir
from synthgrad.experiments.mnist import ClassifierConfig, build_model, run_experiment

RESULTS = Path(__file__).resolve().parent / "results"


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", help="MNIST directory (default: $SYNTHGRAD_DATA/mnist, else the cache)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/bench"), help="where the run directories go")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the markdown table goes")
    parser.add_argument("--dry-run", action="store_true", help="a few steps per cell, to check the script")
    return parser


def data_dir(args: argparse.Namespace) -> str:
    return str(resolve_data_dir("mnist", args.data_dir, dict(os.environ)))


def run(config: ClassifierConfig, run_dir: Path,
        model_builder: Callable[[ClassifierConfig], Any] = build_model) -> dict[str, Any]:
    """One training run, quiet but for a line when it ends."""
    summary = run_experiment(config, run_dir, model_builder=model_builder, on_note=lambda note: None)
    print(f"{run_dir}: test_acc {summary['test_acc']:.4f}, {summary['train_seconds']:.1f} s", file=sys.stderr)
    return summary


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def write_table(results: Path, name: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    """Write a markdown table to ``<results>/<name>.md``, headed by the command that made it, and print it."""
    command = " ".join(["python", *sys.argv])
    lines = [f"Made by `{command}`.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.md"
    path.write_text(text)
    print(text)
    return path

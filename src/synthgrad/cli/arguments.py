"""What the commands share: argument types, common options, where data and runs go, and how a run
reports to the terminal."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence

import torch
from tqdm.auto import tqdm

from synthgrad.engine.config import ON_DIVERGENCE, TrainConfig
from synthgrad.engine.guard import SKIP_SYNTH_LR_FACTOR
from synthgrad.engine.records import SUMMARY_FILE, clear_run_files
from synthgrad.errors import SynthgradError

DATA_ENV = "SYNTHGRAD_DATA"
"""Environment variable naming a directory with one folder per dataset, e.g. ``$SYNTHGRAD_DATA/mnist``."""


def _checked(kind: Callable[[str], Any], is_allowed: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` where ``is_allowed`` holds, else one line saying what was expected."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not is_allowed(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected  # argparse names the type by it in its own messages
    return parse


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    return _checked(kind, lambda value: value > 0, f"a positive {kind.__name__}")


non_negative_int = _checked(int, lambda value: value >= 0, "a non-negative int")
probability = _checked(float, lambda value: 0.0 <= value <= 1.0, "a probability in [0, 1]")
dropout_rate = _checked(float, lambda value: 0.0 <= value < 1.0, "a dropout rate in [0, 1)")


def rank_or_full(text: str) -> Optional[int]:
    """A non-negative integer; 0 means full rank (``None``)."""
    return non_negative_int(text) or None


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="directory holding the dataset's files (default: "
                        f"${DATA_ENV}/<dataset>, else a per-user cache that it is downloaded into)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order (default 0)")
    add_device_argument(parser)
    parser.add_argument("--out", type=Path, help="run directory (default runs/<command>-<model>-<method>-<time>)")
    parser.add_argument("--force", action="store_true", help="write into --out even if it holds a finished run")
    parser.add_argument("--dry-run", action="store_true",
                        help="a few batches on at most 1024 examples, never downloading: a smoke test")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write the metrics as TensorBoard event files into RUN_DIR/tensorboard "
                        "(pip install 'synthgrad[tensorboard]')")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``, read back through ``resolve_device``."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto picks cuda when available (default auto)")


def add_survival_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """Options of every training command for runs that survive crashes and divergence."""
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its newest readable checkpoint, with the options "
                        "it was started with (the same as synthgrad resume RUN_DIR)")
    parser.add_argument("--on-divergence", choices=ON_DIVERGENCE, default=defaults.on_divergence,
                        help="on a non-finite loss or gradient: stop (exit status 3), or skip the step and "
                        f"multiply the synthesizers' learning rate by {SKIP_SYNTH_LR_FACTOR:g} "
                        f"(default {defaults.on_divergence})")


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, like every other mistake (argparse's own print
    the whole usage first, which for ``train`` buries the message under fifteen lines)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def resolve_data_dir(dataset: str, data_dir: Optional[str], environ: dict[str, str]) -> Path:
    """``--data-dir``, else ``$SYNTHGRAD_DATA/<dataset>``, else ``$XDG_CACHE_HOME/synthgrad/<dataset>``
    (``~/.cache`` when unset)."""
    if data_dir:
        return Path(data_dir).expanduser()
    if environ.get(DATA_ENV):
        return Path(environ[DATA_ENV]).expanduser() / dataset
    cache = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "synthgrad" / dataset


def resolve_device(name: str, *, processes: int = 1) -> str:
    """``cpu`` or ``cuda`` for ``--device name`` when ``processes`` processes on this machine each take a GPU
    of their own (a pipeline's local ranks): NCCL refuses two ranks on one GPU, so ``auto`` falls back to
    the CPU (gloo) when there are fewer GPUs than processes, and ``cuda`` is refused before training starts."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        return "cuda" if gpus >= processes else "cpu"
    if name == "cuda" and gpus == 0:
        raise SynthgradError("--device cuda: this PyTorch build sees no CUDA device; use --device cpu or auto")
    if name == "cuda" and gpus < processes:
        raise SynthgradError(f"--device cuda runs one process per GPU, {processes} on this machine, but it has "
                             f"{gpus} GPU{'s' if gpus != 1 else ''}; use --device cpu or fewer --stages per machine")
    return name


def prepare_run_dir(out: Optional[Path], default_name: str, force: bool) -> Path:
    run_dir = out or Path("runs") / f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run_dir / SUMMARY_FILE).exists() and not force:
        raise SynthgradError(f"--out {run_dir} already holds a finished run; pass --force to overwrite it "
                             "or choose another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise SynthgradError(f"--out {run_dir} is a file, not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    clear_run_files(run_dir)  # --force: nothing of the overwritten run may mix with the new one
    return run_dir


def report(summary: dict[str, Any], run_dir: Path, figures: Sequence[Path]) -> None:
    cosines = [f"{value:.2f}" for key, value in summary.items() if key.startswith("sg/cos/")]
    print(f"test accuracy {summary['test_acc']:.4f} (best {summary['best_test_acc']:.4f}) after "
          f"{summary['steps']} steps, {summary['train_seconds']:.1f} s of training"
          + (f"; synthetic-gradient cosine per cut: {', '.join(cosines)}" if cosines else ""))
    print(f"run directory: {run_dir} (figures: {', '.join(path.name for path in figures)})")


def explicit_options(args: argparse.Namespace) -> set[str]:
    """The options of ``args`` whose values differ from their command's defaults (as config field names:
    every option's ``dest`` is its field's name). Needs the command's parser in ``args.command_parser``
    (``set_command_parser``)."""
    parser = args.command_parser
    return {name for name, value in vars(args).items()
            if name != "command_parser" and value != parser.get_default(name)}


def set_command_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Remember ``parser`` in the namespaces it parses, for ``explicit_options``."""
    parser.set_defaults(command_parser=parser)
    return parser


def print_epoch(record: dict[str, Any]) -> None:
    if "test/acc" in record:
        cosines = " ".join(f"{value:.2f}" for key, value in record.items() if key.startswith("sg/cos/"))
        tqdm.write(f"epoch {record['epoch']:.2f}: train loss {record['train/loss']:.4f}, test accuracy "
                   f"{record['test/acc']:.4f}" + (f", sg cosine {cosines}" if cosines else ""), file=sys.stderr)

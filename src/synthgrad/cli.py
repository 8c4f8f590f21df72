"""``synthgrad <command>``: the only module that reads argv and the environment.

Commands: ``train`` (an MNIST-family classifier, every cut decoupled), ``gist`` (the seed experiment,
corrected), ``resume`` (continue an interrupted ``train`` or ``gist`` run; also ``--resume`` on each of
them), ``rnn`` (an LSTM trained by truncated BPTT with synthetic gradients: Copy, Repeat Copy, character
language model), ``bench`` (``table1``, ``rnn``: grids of runs with tables) and ``plot`` (figures of a run
directory). A mistake in the input prints one line and exits
with status 2; it never shows a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence

import torch
from tqdm.auto import tqdm

from synthgrad.bench.table1 import CNN_EPOCHS, FCN_EPOCHS, TABLE1_METHODS, TABLE1_MODELS, Table1Config, run_table1
from synthgrad.checkpoints import checkpoint_path, load_latest_checkpoint, load_states
from synthgrad.divergence import ON_DIVERGENCE, SKIP_SYNTH_LR_FACTOR, TrainingDiverged
from synthgrad.errors import InvalidConfig, SynthgradError
from synthgrad.experiments.gist import GIST_MODEL, build_gist_model, gist_config
from synthgrad.experiments.mnist import (
    DATASETS,
    DNI_DECOUPLED_LR,
    DRY_RUN_STEPS,
    METHODS,
    MODELS,
    PAPER_TRAINING,
    ClassifierConfig,
    classifier_config_from_dict,
    build_model,
    default_decoupled_lr,
    run_experiment,
)
from synthgrad.experiments.rnn import RNN_METHODS, RNNConfig, run_rnn_experiment
from synthgrad.experiments.validation import validate_classifier_config
from synthgrad.metrics import CONFIG_FILE, SUMMARY_FILE, clear_run_files, smooth
from synthgrad.pipeline.comm import PipelineFailure
from synthgrad.pipeline.config import (
    SCHEDULES,
    PipelineConfig,
    PipelineRun,
    Rendezvous,
    check_pipeline_run,
    is_pipeline_config,
    pipeline_run_from_dict,
)
from synthgrad.pipeline.launch import FAILED_STATUS, launch_local
from synthgrad.pipeline.runtime import run_rank
from synthgrad.plots import plot_run
from synthgrad.recurrent_plots import plot_rnn_run
from synthgrad.trainer import LR_SCHEDULES, OPTIMIZERS, TrainConfig, TrainingInterrupted

DIVERGED_STATUS = 3
"""Exit status of a run stopped because it diverged (2 is for bad input)."""
DATA_ENV = "SYNTHGRAD_DATA"
"""Environment variable naming a directory with one folder per dataset, e.g. ``$SYNTHGRAD_DATA/mnist``."""


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative int, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative int, got {text!r}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return value


def _rank(text: str) -> Optional[int]:
    """A non-negative integer; 0 means full rank (``None``)."""
    return _non_negative_int(text) or None


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="directory holding the dataset's IDX files (default: "
                        f"${DATA_ENV}/<dataset>, else a per-user cache that it is downloaded into)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto picks cuda when available (default auto)")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<command>-<model>-<method>-<time>)")
    parser.add_argument("--force", action="store_true", help="write into --out even if it holds a finished run")
    parser.add_argument("--dry-run", action="store_true",
                        help="a few batches on at most 1024 examples, never downloading: a smoke test")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_survival_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """Options of every training command for runs that survive crashes and divergence."""
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its newest readable checkpoint, with the options "
                        "it was started with (the same as synthgrad resume RUN_DIR)")
    parser.add_argument("--on-divergence", choices=ON_DIVERGENCE, default=defaults.on_divergence,
                        help="on a non-finite loss or gradient: stop (exit status 3), or skip the step and "
                        f"multiply the synthesizers' learning rate by {SKIP_SYNTH_LR_FACTOR:g} "
                        f"(default {defaults.on_divergence})")


def _add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    pipeline = parser.add_argument_group("pipeline (one process per stage on torch.distributed)")
    defaults = PipelineConfig()
    pipeline.add_argument("--stages", type=_positive(int), help="split the model into this many stages, one process "
                          "each (started here, or by torchrun when it launched this command)")
    pipeline.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule,
                          help="unlocked (dni/cdni), lockstep (exact pipelined backprop), gpipe or 1f1b "
                          "(torch.distributed.pipelining); auto picks by --method")
    pipeline.add_argument("--max-staleness", type=_non_negative_int, default=defaults.max_staleness,
                          help="unlocked: block updates between a synthesizer's prediction and its training "
                          f"on the target (default {defaults.max_staleness})")
    pipeline.add_argument("--micro-batches", type=_positive(int), default=defaults.micro_batches,
                          help="lockstep/gpipe/1f1b: micro-batches per mini-batch")
    pipeline.add_argument("--timeout", type=_positive(float), default=defaults.timeout_s,
                          help="seconds a rank waits for a message before it declares the sender dead or hung "
                          f"and stops (default {defaults.timeout_s:g})")
    pipeline.add_argument("--threads", type=_positive(int), default=defaults.threads,
                          help="torch threads per stage process (default 1)")
    pipeline.add_argument("--port", type=_positive(int), help="rendezvous port on 127.0.0.1 (default: a free one)")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, like every other mistake (argparse's own print
    the whole usage first, which for ``train`` buries the message under fifteen lines)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="synthgrad", description="Train networks with synthetic gradients "
                                     "(Decoupled Neural Interfaces, arXiv 1608.05343).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train an MNIST-family classifier with every cut decoupled")
    defaults = ClassifierConfig()
    train_defaults = TrainConfig()
    train.add_argument("--dataset", choices=DATASETS, default=defaults.dataset)
    train.add_argument("--model", choices=MODELS, default=defaults.model,
                       help="mlp: --layers hidden layers of --width units; cnn: two small conv blocks; the "
                       "paper's Table 1 nets: fcn3..fcn6 (N layers counting the output layer, 256 units each), "
                       "cnn3, cnn4 (128 5x5 filters per conv layer)")
    train.add_argument("--method", choices=METHODS, default=defaults.method,
                       help="backprop, no-backprop (only the output layer learns), dni (synthesizers see the "
                       "activation) or cdni (and the label); default cdni")
    train.add_argument("--layers", type=_positive(int),
                       help=f"hidden layers of --model mlp (default {defaults.layers}); the presets fix their depth")
    train.add_argument("--width", type=_positive(int), default=defaults.width, help="MLP hidden units")
    train.add_argument("--synth-layers", type=int, default=defaults.synth_layers,
                       help="hidden layers of each DNI synthesizer (cDNI MLP synthesizers are linear)")
    train.add_argument("--synth-width", type=_positive(int), default=defaults.synth_width,
                       help="hidden units (MLP) or filters (CNN) of each synthesizer (default 1024 for mlp, 64 for cnn)")
    train.add_argument("--synth-rank", type=_rank, default=defaults.synth_rank,
                       help="factor each cDNI MLP synthesizer's linear map through this many dimensions; "
                       f"0 for the paper's full map (default {defaults.synth_rank})")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive(int), default=train_defaults.epochs)
    length.add_argument("--steps", type=_positive(int), help="train for this many steps instead of --epochs")
    train.add_argument("--batch-size", type=_positive(int), default=train_defaults.batch_size)
    train.add_argument("--lr", type=_positive(float), default=train_defaults.lr, help="learning rate of the blocks")
    train.add_argument("--synth-lr", type=_positive(float), default=train_defaults.synth_lr,
                       help="learning rate of the synthesizers")
    train.add_argument("--decoupled-lr", type=_positive(float),
                       help="learning rate of the blocks below the top cut, which learn from synthetic gradients "
                       f"(default {DNI_DECOUPLED_LR:g} for dni, else --lr)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=train_defaults.optimizer)
    train.add_argument("--log-every", type=_positive(int), default=train_defaults.log_every,
                       help="write a metrics record every N steps (and at every evaluation)")
    train.add_argument("--checkpoint-every", type=_non_negative_int, default=train_defaults.checkpoint_every,
                       help="write a checkpoint every N steps, a multiple of --log-every; 0 for none "
                       f"(default {train_defaults.checkpoint_every}); resume with `synthgrad resume RUN_DIR`")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=train_defaults.lr_schedule)
    train.add_argument("--update-prob", type=_probability, default=train_defaults.update_prob,
                       help="each block updates its weights at a step only with this probability (the "
                       "paper's stochastic updates; synthesizers always learn); default 1")
    train.add_argument("--forward-unlock", action="store_true",
                       help="complete unlock: each block above the first trains on a prediction of its input "
                       "made from the network input (mlp and fcn models)")
    train.add_argument("--paper", action="store_true",
                       help="the paper's optimisation: " + ", ".join(f"{key} {value}" for key, value
                                                                   in PAPER_TRAINING.items())
                       + " (options you give explicitly still win)")
    _add_pipeline_arguments(train)
    _add_common_arguments(train)
    _add_survival_arguments(train, train_defaults)

    gist = commands.add_parser("gist", help="the seed gist's 784-100-10 MNIST experiment, done right")
    gist_defaults = gist_config().train
    gist.add_argument("--cdni", action="store_true", help="condition the synthesizer on the label")
    gist.add_argument("--synth-every", type=_positive(int), default=gist_defaults.synth_every,
                      help="update the synthesizer every N steps (the gist used 10)")
    gist.add_argument("--synth-lr", type=_positive(float), default=gist_defaults.synth_lr,
                      help=f"synthesizer learning rate (the gist used 1e-4; default {gist_defaults.synth_lr})")
    gist.add_argument("--checkpoint-every", type=_non_negative_int, default=gist_defaults.checkpoint_every,
                      help=f"write a checkpoint every N steps; 0 for none (default {gist_defaults.checkpoint_every})")
    _add_common_arguments(gist)
    _add_survival_arguments(gist, gist_defaults)

    resume = commands.add_parser("resume", help="continue an interrupted run from its newest readable checkpoint")
    resume.add_argument("run_dir", type=Path, help="the run directory (--out) of the interrupted run")
    resume.add_argument("--no-progress", action="store_true", help="no progress bar")
    resume.add_argument("--on-divergence", choices=ON_DIVERGENCE,
                        help="change what a non-finite step does from here on (default: as the run was started)")

    bench = commands.add_parser("bench", help="run a benchmark grid and write its table and figures")
    benchmarks = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    table1 = benchmarks.add_parser("table1", help="the paper's Table 1: feed-forward nets, every layer decoupled")
    table1.add_argument("--datasets", nargs="+", default=["mnist"], help="mnist and/or cifar-10 (default mnist)")
    table1.add_argument("--models", nargs="+", default=list(TABLE1_MODELS),
                        help=f"default all: {' '.join(TABLE1_MODELS)}")
    table1.add_argument("--methods", nargs="+", default=list(TABLE1_METHODS),
                        help=f"default all: {' '.join(TABLE1_METHODS)}")
    table1.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed; the table shows the median")
    table1.add_argument("--epochs", type=_positive(int),
                        help=f"epochs of every cell (default {FCN_EPOCHS} for FCNs, {CNN_EPOCHS} for CNNs)")
    table1.add_argument("--batch-size", type=_positive(int), default=TrainConfig.batch_size)
    table1.add_argument("--data-root", help=f"directory with one folder per dataset (default ${DATA_ENV}, "
                        "else a per-user cache that datasets are downloaded into)")
    table1.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    table1.add_argument("--out", type=Path, default=Path("runs/table1"),
                        help="where the cells' run directories, results.json, table1.md and figures go; "
                        "rerunning with the same --out skips finished cells (default runs/table1)")
    table1.add_argument("--dry-run", action="store_true", help="a few steps per cell on at most 1024 examples")
    table1.add_argument("--no-progress", action="store_true", help="no progress bar")

    plot = commands.add_parser("plot", help="draw a run directory's curves and figures to PNG files")
    plot.add_argument("run_dir", type=Path, help="a directory written by synthgrad train or gist")

    _add_rnn_parser(commands)
    _add_bench_rnn_parser(benchmarks)
    _add_bench_pipeline_parser(benchmarks)
    return parser


TINY_SHAKESPEARE = "tinyshakespeare/input.txt"
"""Where ``charlm`` looks for its default text under ``$SYNTHGRAD_DATA``."""


def _add_rnn_parser(commands: Any) -> None:
    rnn = commands.add_parser("rnn", help="an LSTM trained by truncated BPTT, with synthetic gradients at "
                              "chunk boundaries (Copy, Repeat Copy, character-level language model)")
    tasks = rnn.add_subparsers(dest="task", required=True, metavar="TASK")
    for task, help_text in (("copy", "copy a sequence of random 8-bit patterns, with a length curriculum"),
                            ("repeat-copy", "copy it R times over, with a length curriculum"),
                            ("charlm", "character-level language model of a text file, bits per character")):
        defaults = RNNConfig(task=task, truncation=8 if task == "charlm" else RNNConfig.truncation,
                             hidden_dim=256 if task == "charlm" else RNNConfig.hidden_dim)
        parser = tasks.add_parser(task, help=help_text)
        parser.add_argument("--truncation", "-T", type=_positive(int), default=defaults.truncation,
                            help=f"steps per BPTT chunk (default {defaults.truncation})")
        parser.add_argument("--method", choices=RNN_METHODS, default=defaults.method,
                            help="bptt (truncated BPTT), dni (a synthesizer at each chunk boundary) or dni-aux "
                            "(and the auxiliary task); default dni")
        parser.add_argument("--hidden-dim", type=_positive(int), default=defaults.hidden_dim, help="LSTM units")
        parser.add_argument("--layers", type=_positive(int), default=defaults.num_layers, help="LSTM layers")
        parser.add_argument("--synth-layers", type=_non_negative_int, default=defaults.synth_layers,
                            help="hidden layers of the synthesizer (0: linear, the default)")
        parser.add_argument("--steps", type=_positive(int), default=defaults.steps,
                            help=f"updates: batches or text windows (default {defaults.steps})")
        parser.add_argument("--batch-size", type=_positive(int), default=defaults.batch_size)
        parser.add_argument("--lr", type=_positive(float), default=defaults.lr)
        parser.add_argument("--synth-lr", type=_positive(float), default=defaults.synth_lr)
        parser.add_argument("--aux-weight", type=_positive(float), default=defaults.aux_weight,
                            help="weight of the DNI+Aux loss (dni-aux only)")
        parser.add_argument("--log-every", type=_positive(int), default=defaults.log_every)
        if task == "repeat-copy":
            parser.add_argument("--max-repeats", type=_positive(int), default=defaults.max_repeats,
                                help="repeat counts are drawn from 1..N")
        if task == "charlm":
            parser.add_argument("--text", type=Path, help="a UTF-8 text file: first 90%% trains, last 10%% "
                                f"validates (default ${DATA_ENV}/{TINY_SHAKESPEARE})")
            parser.add_argument("--window", type=_positive(int), default=defaults.window,
                                help="characters per stream and update, a multiple of --truncation")
            parser.add_argument("--eval-every", type=_positive(int), default=defaults.eval_every,
                                help="validate every N updates")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", type=Path, help="run directory (default runs/rnn-<task>-<method>-T<T>-<time>)")
        parser.add_argument("--force", action="store_true", help="write into --out even if it holds a finished run")
        parser.add_argument("--dry-run", action="store_true", help="three updates on little data: a smoke test")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _method_and_truncation(text: str) -> tuple[str, int]:
    method, _, truncation = text.partition(":")
    if method not in RNN_METHODS or not truncation.isdigit() or int(truncation) <= 0:
        raise argparse.ArgumentTypeError(f"expected METHOD:T with METHOD one of {', '.join(RNN_METHODS)} and T a "
                                         f"positive int, e.g. dni:8; got {text!r}")
    return method, int(truncation)


def _add_bench_pipeline_parser(bench_commands: Any) -> None:
    from synthgrad.bench.pipeline import PipelineBenchConfig

    defaults = PipelineBenchConfig()
    bench = bench_commands.add_parser("pipeline", help="update-unlocked cDNI on K processes vs backprop, GPipe and "
                                      "1F1B: throughput, accuracy at equal time, time to 97%%")
    bench.add_argument("--out", type=Path, default=Path("runs/bench-pipeline"),
                       help="results directory; finished runs in it are kept (default runs/bench-pipeline)")
    bench.add_argument("--data-dir", help=f"MNIST directory (default ${DATA_ENV}/mnist, else the cache)")
    bench.add_argument("--epochs", type=_positive(int), default=defaults.epochs)
    bench.add_argument("--layers", type=_positive(int), default=defaults.layers)
    bench.add_argument("--width", type=_positive(int), default=defaults.width)
    bench.add_argument("--batch-size", type=_positive(int), default=defaults.batch_size)
    bench.add_argument("--stages", type=_positive(int), default=defaults.num_stages)
    bench.add_argument("--micro-batches", type=_positive(int), default=defaults.micro_batches)
    bench.add_argument("--max-staleness", type=_non_negative_int, default=defaults.max_staleness)
    bench.add_argument("--seed", type=int, default=defaults.seed)
    bench.add_argument("--repeats", type=_positive(int), default=defaults.repeats,
                       help="run every schedule this many times, round-robin, and count the fastest run of each "
                       "(on a shared machine the others measure the other jobs too)")
    bench.add_argument("--dry-run", action="store_true", help="a few steps each on stand-in data")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_bench_rnn_parser(bench_commands: Any) -> None:
    from synthgrad.bench.rnn import RNNBenchConfig

    defaults = RNNBenchConfig()
    bench = bench_commands.add_parser("rnn", help="Copy / Repeat Copy table (T = 2..5; BPTT, DNI, DNI+Aux) "
                                      "beside the paper's, and BPC against characters seen")
    bench.add_argument("--out", type=Path, default=Path("runs/bench-rnn"),
                       help="where cells, results.json, rnn.md and figures go; finished cells are skipped")
    bench.add_argument("--steps", type=_positive(int), default=defaults.steps,
                       help=f"batches per Copy / Repeat Copy cell (default {defaults.steps})")
    bench.add_argument("--lm-steps", type=_positive(int), default=defaults.lm_steps,
                       help=f"windows per language-model run (default {defaults.lm_steps})")
    bench.add_argument("--text", type=Path, help=f"language-model text (default ${DATA_ENV}/{TINY_SHAKESPEARE})")
    bench.add_argument("--tasks", nargs="*", choices=defaults.tasks, default=list(defaults.tasks),
                       help="sequence tasks of the table (none: only the language model)")
    bench.add_argument("--truncations", type=_positive(int), nargs="+", default=list(defaults.truncations),
                       help="the table's truncations T (default 2 3 4 5)")
    bench.add_argument("--methods", nargs="+", choices=defaults.methods, default=list(defaults.methods),
                       help="the table's methods (default: all)")
    bench.add_argument("--lm-runs", type=_method_and_truncation, nargs="+", default=list(defaults.lm_runs),
                       help="language-model curves as METHOD:T (default: "
                       f"{' '.join(f'{method}:{truncation}' for method, truncation in defaults.lm_runs)})")
    bench.add_argument("--skip-lm", action="store_true", help="only the Copy / Repeat Copy table")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--dry-run", action="store_true", help="a few updates per cell: checks the pipeline")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_data_dir(dataset: str, data_dir: Optional[str], environ: dict[str, str]) -> Path:
    """``--data-dir``, else ``$SYNTHGRAD_DATA/<dataset>``, else ``$XDG_CACHE_HOME/synthgrad/<dataset>``
    (``~/.cache`` when unset)."""
    if data_dir:
        return Path(data_dir).expanduser()
    if environ.get(DATA_ENV):
        return Path(environ[DATA_ENV]).expanduser() / dataset
    cache = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "synthgrad" / dataset


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SynthgradError("--device cuda: this PyTorch build sees no CUDA device; use --device cpu or auto")
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


def _report(summary: dict[str, Any], run_dir: Path, figures: Sequence[Path]) -> None:
    cosines = [f"{value:.2f}" for key, value in summary.items() if key.startswith("sg/cos/")]
    print(f"test accuracy {summary['test_acc']:.4f} (best {summary['best_test_acc']:.4f}) after "
          f"{summary['steps']} steps, {summary['train_seconds']:.1f} s of training"
          + (f"; synthetic-gradient cosine per cut: {', '.join(cosines)}" if cosines else ""))
    print(f"run directory: {run_dir} (figures: {', '.join(path.name for path in figures)})")


def _paper_training(args: argparse.Namespace) -> dict[str, Any]:
    """``--paper``: the paper's optimisation for every option not given explicitly."""
    if not args.paper:
        return {}
    explicit = _explicit_options(args)
    paper = {key: value for key, value in PAPER_TRAINING.items() if key not in explicit}
    if "epochs" in explicit:
        paper.pop("steps", None)
    return paper


def command_train(args: argparse.Namespace, environ: dict[str, str]) -> None:
    if args.resume:
        pipeline = _pipeline_run_in(args.out) if args.out is not None else None
        if pipeline is not None:
            return _resume_pipeline(args.out, pipeline, not args.no_progress, environ)
        return _resume_flag(args)
    options = {**vars(args), **_paper_training(args)}
    config = ClassifierConfig(
        dataset=args.dataset, data_dir=str(resolve_data_dir(args.dataset, args.data_dir, environ)),
        download=not args.dry_run, model=args.model, method=args.method,
        layers=args.layers or ClassifierConfig.layers, width=args.width, synth_layers=args.synth_layers,
        synth_width=args.synth_width, synth_rank=args.synth_rank, forward_unlock=args.forward_unlock,
        dry_run=args.dry_run,
        train=TrainConfig(
            epochs=args.epochs, steps=DRY_RUN_STEPS if args.dry_run else options["steps"],
            batch_size=options["batch_size"], lr=options["lr"], synth_lr=options["synth_lr"],
            decoupled_lr=args.decoupled_lr or default_decoupled_lr(args.method), optimizer=options["optimizer"],
            lr_schedule=options["lr_schedule"], update_prob=args.update_prob, use_context=args.method == "cdni",
            seed=args.seed, device=resolve_device(args.device), progress=not args.no_progress,
            log_every=args.log_every, checkpoint_every=args.checkpoint_every, on_divergence=args.on_divergence,
        ),
    )
    validate_classifier_config(config, build_model, explicit=_explicit_options(args))
    if args.stages:
        run = PipelineRun(config, PipelineConfig(
            num_stages=args.stages, schedule=args.schedule, max_staleness=args.max_staleness,
            micro_batches=args.micro_batches, timeout_s=args.timeout, threads=args.threads))
        _train_pipeline(run, args.out, f"train-{args.model}-{args.method}-stages{args.stages}", args.force, environ,
                        port=args.port)
        return
    _run(config, prepare_run_dir(args.out, f"train-{args.model}-{args.method}", args.force))


def _torchrun_rendezvous(environ: dict[str, str]) -> Optional[Rendezvous]:
    """This process's place in a job started by torchrun (its standard environment variables), or ``None``."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    return Rendezvous(addr=environ.get("MASTER_ADDR", ""), port=int(environ.get("MASTER_PORT", "0")),
                      rank=int(environ["RANK"]), world_size=int(environ["WORLD_SIZE"]),
                      local_rank=int(environ.get("LOCAL_RANK", "0")), use_env=True)


def _train_pipeline(run: PipelineRun, out: Optional[Path], default_name: str, force: bool, environ: dict[str, str], *,
                    port: Optional[int] = None, resume: bool = False) -> None:
    """Train ``run`` as a pipeline: every rank in this process under torchrun, else K local processes."""
    check_pipeline_run(run)  # a bad option stops here, before a directory or a process is made
    rendezvous = _torchrun_rendezvous(environ)
    if rendezvous is None:
        run_dir = out if resume else prepare_run_dir(out, default_name, force)
        summary = launch_local(run, run_dir, port=port, resume=resume, on_record=_print_epoch)
        _report(summary, run_dir, plot_run(run_dir))
        return
    if out is None:
        raise SynthgradError("under torchrun pass --out: every rank must write into the same run directory")
    run_dir = out if resume or rendezvous.rank != 0 else prepare_run_dir(out, default_name, force)
    run.classifier.train.progress = run.classifier.train.progress and rendezvous.rank == 0
    summary = run_rank(run, rendezvous, run_dir, resume=resume, on_record=_print_epoch)
    if summary is not None:
        _report(summary, run_dir, plot_run(run_dir))


def _pipeline_run_in(run_dir: Path) -> Optional[PipelineRun]:
    """The configuration of the pipeline run in ``run_dir``, or ``None`` if it holds another kind of run."""
    try:
        data = json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not is_pipeline_config(data):
        return None
    try:
        return pipeline_run_from_dict(data)
    except (ValueError, TypeError, KeyError) as error:
        raise SynthgradError(f"{run_dir / CONFIG_FILE} is not a synthgrad pipeline configuration ({error}); "
                             "start the run again with --force") from None


def _resume_pipeline(run_dir: Path, run: PipelineRun, progress: bool, environ: dict[str, str]) -> None:
    if (run_dir / SUMMARY_FILE).exists():
        raise SynthgradError(f"{run_dir} holds a finished run; there is nothing to resume")
    run.classifier.train.progress = progress
    print(f"resuming {run_dir}: a pipeline of {run.pipeline.num_stages} stages", file=sys.stderr)
    _train_pipeline(run, run_dir, "", False, environ, resume=True)


def _explicit_options(args: argparse.Namespace) -> set[str]:
    """The options of ``args`` whose values differ from the command's defaults (as config field
    names: every option's ``dest`` is its field's name)."""
    defaults = vars(build_parser().parse_args([args.command]))
    return {name for name, value in vars(args).items() if value != defaults.get(name)}


def _model_builder(config: ClassifierConfig) -> Callable[[ClassifierConfig], Any]:
    return build_gist_model if config.model == GIST_MODEL else build_model


def _run(config: ClassifierConfig, run_dir: Path, resume: Optional[dict[str, Any]] = None) -> None:
    """Run (or, from the checkpoint ``resume``, continue) a train or gist run and report it; one path
    for both, so that a resumed run does exactly what the first one did."""
    is_gist = config.model == GIST_MODEL
    previous_threads = torch.get_num_threads()
    if is_gist:
        torch.set_num_threads(1)  # batches of 10 through a 784-100-10 net: threads cost more than they give
    try:
        with _ctrl_c_requests_stop() as stop_requested:
            summary = run_experiment(config, run_dir, model_builder=_model_builder(config),
                                     on_record=_gist_printer() if is_gist else _print_epoch, resume=resume,
                                     stop_requested=stop_requested)
    finally:
        torch.set_num_threads(previous_threads)
    _report(summary, run_dir, plot_run(run_dir))


@contextlib.contextmanager
def _ctrl_c_requests_stop() -> Iterator[Callable[[], bool]]:
    """While active, a first Ctrl-C asks training to stop after the current step (with a checkpoint);
    a second one interrupts at once."""
    requested = False

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True
        print("\nstopping after this step (Ctrl-C again to abort at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_epoch(record: dict[str, Any]) -> None:
    if "test/acc" in record:
        cosines = " ".join(f"{value:.2f}" for key, value in record.items() if key.startswith("sg/cos/"))
        tqdm.write(f"epoch {record['epoch']:.2f}: train loss {record['train/loss']:.4f}, test accuracy "
                   f"{record['test/acc']:.4f}" + (f", sg cosine {cosines}" if cosines else ""), file=sys.stderr)


def command_resume(args: argparse.Namespace, environ: dict[str, str]) -> None:
    pipeline = _pipeline_run_in(args.run_dir)
    if pipeline is not None:
        return _resume_pipeline(args.run_dir, pipeline, not args.no_progress, environ)
    _resume(args.run_dir, progress=not args.no_progress, on_divergence=args.on_divergence)


_RESUME_KEEPS = {"command", "resume", "out", "no_progress", "on_divergence"}
"""What may be given with ``--resume``; everything else comes from the run's ``config.json``. A run that
diverged can go on past that step with ``--on-divergence skip``: nothing else changes until a step
would be skipped."""


def _resume_flag(args: argparse.Namespace) -> None:
    """``synthgrad <command> --resume --out RUN_DIR``: ``synthgrad resume RUN_DIR``, for a run of this
    command only, and without options that would contradict the run's own."""
    if args.out is None:
        raise SynthgradError("--resume needs --out RUN_DIR, the directory of the run to continue")
    explicit = _explicit_options(args)
    extra = sorted(explicit - _RESUME_KEEPS)
    if extra:
        raise SynthgradError(f"--resume continues {args.out} with the options it was started with (its "
                             f"{CONFIG_FILE}); drop --{extra[0].replace('_', '-')}, or start a new run without "
                             "--resume")
    _resume(args.out, progress=not args.no_progress, expected=args.command,
            on_divergence=args.on_divergence if "on_divergence" in explicit else None)


def _resume(run_dir: Path, *, progress: bool, expected: Optional[str] = None,
            on_divergence: Optional[str] = None) -> None:
    """Continue the run in ``run_dir`` (a run of the command ``expected``, when given) from its newest
    readable checkpoint, with ``on_divergence`` from here on when given."""
    config, checkpoint = _load_interrupted_run(run_dir)
    kind = "gist" if config.model == GIST_MODEL else "train"
    if expected is not None and kind != expected:
        raise SynthgradError(f"{run_dir} holds a synthgrad {kind} run; continue it with synthgrad {kind} --resume "
                             f"--out {run_dir}")
    config.train.progress = progress and kind == "train"
    config.train.on_divergence = on_divergence or config.train.on_divergence
    print(f"resuming {run_dir} from step {checkpoint['step']}", file=sys.stderr)
    _run(config, run_dir, resume=checkpoint)


def _load_interrupted_run(run_dir: Path) -> tuple[ClassifierConfig, dict[str, Any]]:
    """The configuration and newest readable checkpoint of an unfinished run, or a ``SynthgradError``
    saying what is wrong with ``run_dir``."""
    if run_dir.exists() and not run_dir.is_dir():
        raise SynthgradError(f"{run_dir} is a file, not a run directory; pass the --out directory of a run")
    if not (run_dir / CONFIG_FILE).is_file():
        raise SynthgradError(f"{run_dir} has no {CONFIG_FILE}: pass the --out directory of a synthgrad train "
                             "or gist run")
    if (run_dir / SUMMARY_FILE).exists():
        raise SynthgradError(f"{run_dir} holds a finished run; there is nothing to resume")
    path = run_dir / CONFIG_FILE
    try:
        config = classifier_config_from_dict(json.loads(path.read_text()))
        validate_classifier_config(config, _model_builder(config))
    except InvalidConfig as error:
        raise SynthgradError(f"{path} is not a valid run configuration: {error}; start the run again with "
                             "--force") from None
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as error:
        raise SynthgradError(f"{path} is not a synthgrad run configuration ({type(error).__name__}: {error}); "
                             "start the run again with --force") from None
    checkpoint = load_latest_checkpoint(run_dir)
    if checkpoint is None:
        raise SynthgradError(f"{run_dir} has no readable checkpoint (the run stopped before its first one, or "
                             f"every one is corrupt); start it again with --out {run_dir} --force")
    with torch.random.fork_rng(devices=[]):  # the trainer checks again; this says so before any work
        load_states(checkpoint, checkpoint_path(run_dir, checkpoint["step"]), model=_model_builder(config)(config))
    return config, checkpoint


def command_gist(args: argparse.Namespace, environ: dict[str, str]) -> None:
    if args.resume:
        return _resume_flag(args)
    method = "cdni" if args.cdni else "dni"
    config = gist_config(method, synth_every=args.synth_every, synth_lr=args.synth_lr, seed=args.seed,
                         device=resolve_device(args.device), progress=False, checkpoint_every=args.checkpoint_every,
                         on_divergence=args.on_divergence, **({"steps": DRY_RUN_STEPS} if args.dry_run else {}))
    config.data_dir = str(resolve_data_dir("mnist", args.data_dir, environ))
    config.dry_run, config.download = args.dry_run, not args.dry_run
    validate_classifier_config(config, build_gist_model)
    _run(config, prepare_run_dir(args.out, f"gist-{method}", args.force))


def _gist_printer() -> Callable[[dict[str, Any]], None]:
    """Prints what the gist printed: test accuracy at each evaluation, the smoothed loss every 100
    iterations. A resumed run smooths only the losses since it resumed."""
    losses: list[float] = []

    def on_record(record: dict[str, Any]) -> None:
        step = record["step"]
        losses.append(record["train/loss"])
        if "test/acc" in record:
            print(f"iteration {step}: test accuracy {record['test/acc']:.3f}")
        if step % 100 == 0:
            print(f"\titeration {step}: smooth_loss {smooth(losses)[-1]:.3f}, synth_loss {record['sg/loss/0']:.3f}")
    return on_record


def _bench_table1(args: argparse.Namespace, environ: dict[str, str]) -> None:
    root = {DATA_ENV: args.data_root} if args.data_root else environ
    config = Table1Config(
        data_dirs={dataset: str(resolve_data_dir(dataset, None, root)) for dataset in args.datasets},
        datasets=tuple(args.datasets), models=tuple(args.models), methods=tuple(args.methods),
        seeds=tuple(args.seeds), epochs=args.epochs, device=resolve_device(args.device), dry_run=args.dry_run,
        progress=not args.no_progress, train_overrides={"batch_size": args.batch_size},
    )
    command = " ".join([
        "synthgrad bench table1", "--datasets", *args.datasets, "--models", *args.models, "--methods", *args.methods,
        "--seeds", *map(str, args.seeds), *(["--epochs", str(args.epochs)] if args.epochs else []),
        "--batch-size", str(args.batch_size), *(["--device", args.device] if args.device != "auto" else []),
        "--out", str(args.out), *(["--dry-run"] if args.dry_run else [])])
    run_table1(config, args.out, command=command, on_note=lambda note: tqdm.write(note, file=sys.stderr))
    print((args.out / "table1.md").read_text())


def _is_rnn_run(run_dir: Path) -> bool:
    try:
        return "truncation" in json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False


def command_plot(args: argparse.Namespace, environ: dict[str, str]) -> None:
    for path in (plot_rnn_run if _is_rnn_run(args.run_dir) else plot_run)(args.run_dir):
        print(path)


def _default_text(text: Optional[Path], environ: dict[str, str]) -> Path:
    if text is not None:
        return text
    if environ.get(DATA_ENV):
        return Path(environ[DATA_ENV]).expanduser() / TINY_SHAKESPEARE
    raise SynthgradError(f"no text to model: pass --text FILE (or set ${DATA_ENV} to a directory holding "
                         f"{TINY_SHAKESPEARE})")


def command_rnn(args: argparse.Namespace, environ: dict[str, str]) -> None:
    task = args.task
    config = RNNConfig(
        task=task, method=args.method, truncation=args.truncation, hidden_dim=args.hidden_dim,
        num_layers=args.layers, synth_layers=args.synth_layers, aux_weight=args.aux_weight,
        batch_size=args.batch_size, lr=args.lr, synth_lr=args.synth_lr, steps=args.steps, seed=args.seed,
        log_every=1 if args.dry_run else args.log_every, dry_run=args.dry_run, progress=not args.no_progress,
    )
    if task == "repeat-copy":
        config.max_repeats = args.max_repeats
    if task == "charlm":
        config.text, config.window, config.eval_every = str(_default_text(args.text, environ)), args.window, args.eval_every
        if args.window % args.truncation:
            raise SynthgradError(f"--window {args.window} must be a multiple of --truncation {args.truncation}")
    run_dir = prepare_run_dir(args.out, f"rnn-{task}-{args.method}-T{args.truncation}", args.force)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small LSTMs, one step at a time: a second thread costs more than it gives
    try:
        summary = run_rnn_experiment(config, run_dir)
    finally:
        torch.set_num_threads(threads)
    figures = plot_rnn_run(run_dir)
    if task == "charlm":
        print(f"validation {summary['val_bpc']:.3f} bits per character after {summary['chars_seen']} characters "
              f"({summary['train_seconds']:.1f} s of training)")
    else:
        print(f"longest length solved: {summary['max_length_solved']} in {summary['steps']} steps "
              f"({summary['train_seconds']:.1f} s of training)")
    print(f"run directory: {run_dir} (figures: {', '.join(path.name for path in figures)})")


def command_bench(args: argparse.Namespace, environ: dict[str, str]) -> None:
    BENCHMARKS[args.benchmark](args, environ)


def _bench_rnn_command(args: argparse.Namespace) -> str:
    """The ``synthgrad bench rnn`` command line that reproduces ``args``, for the table's first line."""
    return " ".join([
        "synthgrad bench rnn", "--tasks", *args.tasks, "--truncations", *map(str, args.truncations),
        "--methods", *args.methods, "--steps", str(args.steps),
        *(["--skip-lm"] if args.skip_lm else ["--lm-runs", *(f"{method}:{truncation}" for method, truncation
                                                            in args.lm_runs), "--lm-steps", str(args.lm_steps)]),
        *(["--text", str(args.text)] if args.text else []), "--seed", str(args.seed), "--out", str(args.out),
        *(["--dry-run"] if args.dry_run else [])])


def _bench_rnn(args: argparse.Namespace, environ: dict[str, str]) -> None:
    from synthgrad.bench.rnn import RNNBenchConfig, run_rnn

    text = None if args.skip_lm else str(_default_text(args.text, environ))
    config = RNNBenchConfig(steps=args.steps, lm_steps=args.lm_steps, text=text, seed=args.seed, tasks=tuple(args.tasks),
                            truncations=tuple(args.truncations), methods=tuple(args.methods),
                            lm_runs=tuple(args.lm_runs),
                            dry_run=args.dry_run, progress=not args.no_progress)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = run_rnn(config, args.out, command=_bench_rnn_command(args))
    finally:
        torch.set_num_threads(threads)
    print(results["table"])
    print(f"written: {', '.join(results['files'])}")


def _bench_pipeline(args: argparse.Namespace, environ: dict[str, str]) -> None:
    from synthgrad.bench.pipeline import TABLE_FILE, PipelineBenchConfig, run_pipeline

    if args.stages < 2:
        raise SynthgradError(f"--stages {args.stages}: the benchmark compares pipelines of at least 2 stages")
    config = PipelineBenchConfig(
        data_dir=str(resolve_data_dir("mnist", args.data_dir, environ)), layers=args.layers, width=args.width,
        epochs=args.epochs, batch_size=args.batch_size, num_stages=args.stages, micro_batches=args.micro_batches,
        max_staleness=args.max_staleness, seed=args.seed, repeats=args.repeats, dry_run=args.dry_run)
    command = ("synthgrad bench pipeline " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["bench", "pipeline"]
               else "synthgrad bench pipeline")
    run_pipeline(config, args.out, command=command.strip(), progress=not args.no_progress)
    print((args.out / TABLE_FILE).read_text())


BENCHMARKS = {"table1": _bench_table1, "rnn": _bench_rnn, "pipeline": _bench_pipeline}
"""``synthgrad bench <name>``: one function per benchmark module in ``synthgrad/bench/``."""
COMMANDS = {"train": command_train, "gist": command_gist, "resume": command_resume, "bench": command_bench,
            "rnn": command_rnn, "plot": command_plot}


def main(argv: Optional[Sequence[str]] = None, environ: Optional[dict[str, str]] = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args, dict(os.environ) if environ is None else environ)
    except TrainingInterrupted as interrupted:
        print(f"synthgrad {args.command}: {interrupted}; continue with: synthgrad resume "
              f"{interrupted.checkpoint.parent}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())

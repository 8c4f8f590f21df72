"""``synthgrad bench <name>``: one sub-command per benchmark module in ``synthgrad/bench/``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from tqdm.auto import tqdm

from synthgrad.bench.table1 import CNN_EPOCHS, FCN_EPOCHS, TABLE1_METHODS, TABLE1_MODELS, Table1Config, run_table1
from synthgrad.cli.arguments import (DATA_ENV, dropout_rate, non_negative_int, positive, resolve_data_dir,
                                     resolve_device)
from synthgrad.cli.rnn import TINY_SHAKESPEARE, default_text
from synthgrad.errors import SynthgradError
from synthgrad.experiments.classifier_config import CONV_TRAINING, ClassifierConfig
from synthgrad.experiments.rnn import RNN_METHODS


def add_bench_parser(commands: Any) -> None:
    """``bench`` and one sub-command per benchmark in ``synthgrad/bench/``."""
    bench = commands.add_parser("bench", help="run a benchmark grid and write its table and figures")
    benchmarks = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    table1 = benchmarks.add_parser("table1", help="the paper's Table 1: feed-forward nets, every layer decoupled")
    table1.add_argument("--datasets", nargs="+", default=["mnist"], help="mnist and/or cifar-10 (default mnist)")
    table1.add_argument("--models", nargs="+", default=list(TABLE1_MODELS),
                        help=f"default all: {' '.join(TABLE1_MODELS)}")
    table1.add_argument("--methods", nargs="+", default=list(TABLE1_METHODS),
                        help=f"default all: {' '.join(TABLE1_METHODS)}")
    table1.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one run per seed; the table shows the median")
    table1.add_argument("--epochs", type=positive(int),
                        help=f"epochs of every cell (default {FCN_EPOCHS} for FCNs, {CNN_EPOCHS} for CNNs)")
    table1.add_argument("--batch-size", type=positive(int),
                        help=f"batch size of every cell (default {ClassifierConfig.batch_size}, "
                        f"{CONV_TRAINING['batch_size']} for the CNNs)")
    table1.add_argument("--data-root", help=f"directory with one folder per dataset (default ${DATA_ENV}, "
                        "else a per-user cache that datasets are downloaded into)")
    table1.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    table1.add_argument("--out", type=Path, default=Path("runs/table1"),
                        help="where the cells' run directories, results.json, table1.md and figures go; "
                        "rerunning with the same --out skips finished cells (default runs/table1)")
    table1.add_argument("--dry-run", action="store_true", help="a few steps per cell on at most 1024 examples")
    table1.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_bench_rnn_parser(benchmarks)
    add_bench_pipeline_parser(benchmarks)
    add_bench_gist_parser(benchmarks)
    add_bench_methods_parser(benchmarks)
    add_bench_overhead_parser(benchmarks)


def _method_and_truncation(text: str) -> tuple[str, int]:
    method, _, truncation = text.partition(":")
    if method not in RNN_METHODS or not truncation.isdigit() or int(truncation) <= 0:
        raise argparse.ArgumentTypeError(f"expected METHOD:T with METHOD one of {', '.join(RNN_METHODS)} and T a "
                                         f"positive int, e.g. dni:8; got {text!r}")
    return method, int(truncation)


def add_bench_pipeline_parser(bench_commands: Any) -> None:
    from synthgrad.bench.pipeline import PipelineBenchConfig

    defaults = PipelineBenchConfig()
    bench = _mnist_bench_parser(bench_commands, "pipeline", "update-unlocked cDNI on K processes vs backprop, GPipe "
                                "and 1F1B: throughput, accuracy at equal time, time to 97%%", seeds=None)
    bench.add_argument("--epochs", type=positive(int), default=defaults.epochs)
    bench.add_argument("--layers", type=positive(int), default=defaults.layers)
    bench.add_argument("--width", type=positive(int), default=defaults.width)
    bench.add_argument("--batch-size", type=positive(int), default=defaults.batch_size)
    bench.add_argument("--stages", type=positive(int), default=defaults.num_stages)
    bench.add_argument("--micro-batches", type=positive(int), default=defaults.micro_batches)
    bench.add_argument("--max-staleness", type=non_negative_int, default=defaults.max_staleness)
    bench.add_argument("--decoupled-lr", type=positive(float), default=defaults.decoupled_lr,
                       help="learning rate of the cDNI blocks below the top cut (default %(default)g; the "
                       "backprop, GPipe and 1F1B runs train every block at 1e-3)")
    bench.add_argument("--seed", type=int, default=defaults.seed)
    bench.add_argument("--repeats", type=positive(int), default=defaults.repeats,
                       help="run every schedule this many times, round-robin, and count the fastest run of each "
                       "(on a shared machine the others measure the other jobs too); the table also gives the "
                       "median over the rounds of each schedule's speed-up on that round's backprop run")


def _mnist_bench_parser(bench_commands: Any, name: str, help: str,
                        seeds: Optional[Sequence[int]]) -> argparse.ArgumentParser:
    """The sub-parser of an MNIST classifier bench, with what every such bench takes: ``--out``,
    ``--data-dir``, ``--seeds`` (unless ``seeds`` is ``None``), ``--dry-run`` and ``--no-progress``."""
    bench = bench_commands.add_parser(name, help=help)
    bench.add_argument("--out", type=Path, default=Path(f"runs/bench-{name}"),
                       help=f"where the cells' run directories, results.json and {name}.md go; finished cells are "
                       f"skipped (default runs/bench-{name})")
    bench.add_argument("--data-dir", help=f"MNIST directory (default ${DATA_ENV}/mnist, else the cache)")
    if seeds is not None:
        bench.add_argument("--seeds", type=int, nargs="+", default=list(seeds),
                           help=f"one run per seed; the table shows the median (default {' '.join(map(str, seeds))})")
    bench.add_argument("--dry-run", action="store_true",
                       help="a few steps per cell (on at most 1024 examples, or stand-in data): a smoke test")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    return bench


def add_bench_gist_parser(bench_commands: Any) -> None:
    from synthgrad.bench.gist import GIST_METHODS, GistBenchConfig

    defaults = GistBenchConfig()
    bench = _mnist_bench_parser(bench_commands, "gist", "the seed gist's experiment over seeds: backprop, DNI and "
                                "cDNI, test accuracy after 1000 iterations and training seconds", defaults.seeds)
    bench.add_argument("--methods", nargs="+", default=list(defaults.methods),
                       help=f"default all: {' '.join(GIST_METHODS)}")


def add_bench_methods_parser(bench_commands: Any) -> None:
    from synthgrad.bench.methods import TIME_REFERENCE, VARIANTS, MethodsBenchConfig

    defaults = MethodsBenchConfig()
    bench = _mnist_bench_parser(bench_commands, "methods", "backprop, DNI and cDNI on the default MNIST MLP: "
                                "accuracy, seconds per epoch and synthetic-gradient cosine", defaults.seeds)
    bench.add_argument("--variants", nargs="+", default=list(defaults.variants),
                       help=f"rows, default all: {' '.join(VARIANTS)}; {TIME_REFERENCE} always runs, as the time "
                       "reference")
    bench.add_argument("--epochs", type=positive(int), default=defaults.epochs)
    bench.add_argument("--batch-size", type=positive(int), default=defaults.batch_size)


def add_bench_overhead_parser(bench_commands: Any) -> None:
    from synthgrad.bench.overhead import OverheadBenchConfig

    bench = _mnist_bench_parser(bench_commands, "overhead", "one epoch of a plain PyTorch loop beside synthgrad train "
                                "--method backprop and --method cdni: what the engine and decoupling cost", seeds=None)
    bench.add_argument("--rounds", type=positive(int), default=OverheadBenchConfig.rounds,
                       help="one epoch of each run per round, in turn; the table gives the medians")


def add_bench_rnn_parser(bench_commands: Any) -> None:
    from synthgrad.bench.rnn import RNNBenchConfig

    defaults = RNNBenchConfig()
    bench = bench_commands.add_parser("rnn", help="Copy / Repeat Copy table (T = 2..5; BPTT, DNI, DNI+Aux) "
                                      "beside the paper's, and BPC against characters seen")
    bench.add_argument("--out", type=Path, default=Path("runs/bench-rnn"),
                       help="where cells, results.json, rnn.md and figures go; finished cells are skipped")
    bench.add_argument("--steps", type=positive(int), default=defaults.steps,
                       help=f"batches per Copy / Repeat Copy cell (default {defaults.steps})")
    bench.add_argument("--lm-steps", type=positive(int), default=defaults.lm_steps,
                       help=f"windows per language-model run (default {defaults.lm_steps})")
    bench.add_argument("--lm-dropout", type=dropout_rate, default=defaults.lm_dropout,
                       help=f"dropout on the language model's LSTM outputs (default {defaults.lm_dropout})")
    bench.add_argument("--text", type=Path, help=f"language-model text (default ${DATA_ENV}/{TINY_SHAKESPEARE})")
    bench.add_argument("--tasks", nargs="*", choices=defaults.tasks, default=list(defaults.tasks),
                       help="sequence tasks of the table (none: only the language model)")
    bench.add_argument("--truncations", type=positive(int), nargs="+", default=list(defaults.truncations),
                       help="the table's truncations T (default 2 3 4 5)")
    bench.add_argument("--methods", nargs="+", choices=RNN_METHODS, default=list(defaults.methods),
                       help=f"the table's methods (default: {' '.join(defaults.methods)})")
    bench.add_argument("--hidden-dim", type=positive(int), default=defaults.hidden_dim,
                       help=f"LSTM units of the Copy / Repeat Copy cells (default {defaults.hidden_dim})")
    bench.add_argument("--batch-size", type=positive(int), default=defaults.batch_size,
                       help=f"batch of the Copy / Repeat Copy cells (default {defaults.batch_size})")
    bench.add_argument("--lr", type=positive(float), default=defaults.lr,
                       help=f"Adam learning rate of the Copy / Repeat Copy cells (default {defaults.lr:g})")
    bench.add_argument("--lm-runs", type=_method_and_truncation, nargs="+", default=list(defaults.lm_runs),
                       help="language-model curves as METHOD:T (default: "
                       f"{' '.join(f'{method}:{truncation}' for method, truncation in defaults.lm_runs)})")
    bench.add_argument("--skip-lm", action="store_true", help="only the Copy / Repeat Copy table")
    bench.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds),
                       help="one run per seed in every cell; the tables give the median (default 0)")
    bench.add_argument("--dry-run", action="store_true", help="a few updates per cell: checks the pipeline")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")


def _bench_table1(args: argparse.Namespace, environ: dict[str, str]) -> None:
    root = {DATA_ENV: args.data_root} if args.data_root else environ
    config = Table1Config(
        data_dirs={dataset: str(resolve_data_dir(dataset, None, root)) for dataset in args.datasets},
        datasets=tuple(args.datasets), models=tuple(args.models), methods=tuple(args.methods),
        seeds=tuple(args.seeds), epochs=args.epochs, device=resolve_device(args.device), dry_run=args.dry_run,
        progress=not args.no_progress,
        overrides={} if args.batch_size is None else {"batch_size": args.batch_size},
    )
    command = reproducing_command("table1", [
        ("--datasets", args.datasets), ("--models", args.models), ("--methods", args.methods), ("--seeds", args.seeds),
        ("--epochs", args.epochs), ("--batch-size", args.batch_size),
        ("--device", None if args.device == "auto" else args.device), ("--out", args.out), ("--dry-run", args.dry_run)])
    run_table1(config, args.out, command=command, on_note=_note)
    print((args.out / "table1.md").read_text())


def command_bench(args: argparse.Namespace, environ: dict[str, str]) -> None:
    BENCHMARKS[args.benchmark](args, environ)


def reproducing_command(benchmark: str, options: Sequence[tuple[str, Any]]) -> str:
    """The ``synthgrad bench <benchmark>`` command line that gives the parsed ``options`` again, for the
    first line of its table: each ``(flag, value)`` in order, left out when the value is ``None`` or
    ``False``, bare when ``True``, followed by the items of a list or tuple, else by the value."""
    words = ["synthgrad", "bench", benchmark]
    for flag, value in options:
        if value is None or value is False:
            continue
        words.append(flag)
        if value is not True:
            words += map(str, value) if isinstance(value, (list, tuple)) else [str(value)]
    return " ".join(words)


def _bench_rnn_command(args: argparse.Namespace) -> str:
    """The ``synthgrad bench rnn`` command line that reproduces ``args``, for the table's first line."""
    return reproducing_command("rnn", [
        ("--tasks", args.tasks), ("--truncations", args.truncations), ("--methods", args.methods),
        ("--steps", args.steps), ("--hidden-dim", args.hidden_dim if args.tasks else None),
        ("--batch-size", args.batch_size if args.tasks else None),
        ("--lr", args.lr if args.tasks else None), ("--skip-lm", args.skip_lm),
        ("--lm-runs", None if args.skip_lm else [f"{method}:{truncation}" for method, truncation in args.lm_runs]),
        ("--lm-steps", None if args.skip_lm else args.lm_steps),
        ("--lm-dropout", None if args.skip_lm else args.lm_dropout), ("--text", args.text), ("--seeds", args.seeds),
        ("--out", args.out), ("--dry-run", args.dry_run)])


def _bench_rnn(args: argparse.Namespace, environ: dict[str, str]) -> None:
    from synthgrad.bench.rnn import RNNBenchConfig, run_rnn

    text = None if args.skip_lm else str(default_text(args.text, environ))
    config = RNNBenchConfig(steps=args.steps, lm_steps=args.lm_steps, text=text, seeds=tuple(args.seeds),
                            tasks=tuple(args.tasks),
                            truncations=tuple(args.truncations), methods=tuple(args.methods),
                            hidden_dim=args.hidden_dim, batch_size=args.batch_size, lr=args.lr,
                            lm_runs=tuple(args.lm_runs), lm_dropout=args.lm_dropout,
                            dry_run=args.dry_run, progress=not args.no_progress)
    results = run_rnn(config, args.out, command=_bench_rnn_command(args))
    print(results["table"])
    print(f"written: {', '.join(results['files'])}")


def _bench_pipeline(args: argparse.Namespace, environ: dict[str, str]) -> None:
    from synthgrad.bench.pipeline import TABLE_FILE, PipelineBenchConfig, run_pipeline

    if args.stages < 2:
        raise SynthgradError(f"--stages {args.stages}: the benchmark compares pipelines of at least 2 stages")
    config = PipelineBenchConfig(
        data_dir=str(resolve_data_dir("mnist", args.data_dir, environ)), layers=args.layers, width=args.width,
        epochs=args.epochs, batch_size=args.batch_size, num_stages=args.stages, micro_batches=args.micro_batches,
        max_staleness=args.max_staleness, decoupled_lr=args.decoupled_lr, seed=args.seed, repeats=args.repeats,
        dry_run=args.dry_run)
    command = _command_line("pipeline", args, _PIPELINE_OPTIONS)
    run_pipeline(config, args.out, command=command, progress=not args.no_progress)
    print((args.out / TABLE_FILE).read_text())


_PIPELINE_OPTIONS = ("epochs", "layers", "width", "batch_size", "stages", "micro_batches", "max_staleness",
                     "decoupled_lr", "seed", "repeats", "data_dir", "out")
"""What ``synthgrad bench pipeline`` records of its options (all but ``--no-progress``)."""


def _command_line(benchmark: str, args: argparse.Namespace, options: Sequence[str]) -> str:
    """``synthgrad bench <benchmark>`` with the value of every option in ``options`` (``args`` attribute
    names) as parsed, then ``--dry-run`` if set: the command that reproduces ``args``, for a table's first
    line (``reproducing_command`` writes it: an option whose value is ``None`` is left out)."""
    return reproducing_command(benchmark, [*(("--" + name.replace("_", "-"), getattr(args, name)) for name in options),
                                           ("--dry-run", args.dry_run)])


def _note(note: str) -> None:
    tqdm.write(note, file=sys.stderr)


def _bench_gist(args: argparse.Namespace, environ: dict[str, str]) -> None:
    from synthgrad.bench.gist import GistBenchConfig, run_gist

    config = GistBenchConfig(data_dir=str(resolve_data_dir("mnist", args.data_dir, environ)),
                             methods=tuple(args.methods), seeds=tuple(args.seeds), dry_run=args.dry_run,
                             progress=not args.no_progress)
    run_gist(config, args.out, command=_command_line("gist", args, ("methods", "seeds", "out")), on_note=_note)
    print((args.out / "gist.md").read_text())


def _bench_methods(args: argparse.Namespace, environ: dict[str, str]) -> None:
    from synthgrad.bench.methods import MethodsBenchConfig, run_methods

    config = MethodsBenchConfig(data_dir=str(resolve_data_dir("mnist", args.data_dir, environ)),
                                variants=tuple(args.variants), seeds=tuple(args.seeds), epochs=args.epochs,
                                batch_size=args.batch_size, dry_run=args.dry_run, progress=not args.no_progress)
    command = _command_line("methods", args, ("variants", "seeds", "epochs", "batch_size", "out"))
    run_methods(config, args.out, command=command, on_note=_note)
    print((args.out / "methods.md").read_text())


def _bench_overhead(args: argparse.Namespace, environ: dict[str, str]) -> None:
    from synthgrad.bench.overhead import OverheadBenchConfig, run_overhead

    config = OverheadBenchConfig(data_dir=str(resolve_data_dir("mnist", args.data_dir, environ)), rounds=args.rounds,
                                 dry_run=args.dry_run)
    run_overhead(config, args.out, command=_command_line("overhead", args, ("rounds", "out")),
                 progress=not args.no_progress)
    print((args.out / "overhead.md").read_text())


BENCHMARKS = {"table1": _bench_table1, "rnn": _bench_rnn, "pipeline": _bench_pipeline, "gist": _bench_gist,
              "methods": _bench_methods, "overhead": _bench_overhead}
"""``synthgrad bench <name>``: one function per benchmark module in ``synthgrad/bench/``."""

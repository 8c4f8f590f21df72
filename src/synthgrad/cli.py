"""``synthgrad <command>``: the only module that reads argv and the environment.

Commands: ``train`` (an MNIST-family classifier, every cut decoupled), ``gist`` (the seed experiment,
corrected), ``resume`` (continue an interrupted ``train`` run) and ``plot`` (figures of a run directory). A mistake in the input prints one line and exits
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
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from tqdm.auto import tqdm

from synthgrad.bench.pipeline import TABLE_FILE, PipelineBenchConfig, run_pipeline
from synthgrad.checkpoints import list_checkpoints, load_latest_checkpoint
from synthgrad.divergence import TrainingDiverged
from synthgrad.errors import SynthgradError
from synthgrad.experiments.gist import build_gist_model, gist_config
from synthgrad.experiments.mnist import (
    DATASETS,
    DNI_DECOUPLED_LR,
    DRY_RUN_STEPS,
    METHODS,
    MODELS,
    ClassifierConfig,
    classifier_config_from_dict,
    default_decoupled_lr,
    run_experiment,
)
from synthgrad.metrics import CONFIG_FILE, RUN_FILES, SUMMARY_FILE, smooth
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthgrad", description="Train networks with synthetic gradients "
                                     "(Decoupled Neural Interfaces, arXiv 1608.05343).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train an MNIST-family classifier with every cut decoupled")
    defaults = ClassifierConfig()
    train_defaults = TrainConfig()
    train.add_argument("--dataset", choices=DATASETS, default=defaults.dataset)
    train.add_argument("--model", choices=MODELS, default=defaults.model,
                       help="mlp: --layers hidden layers of --width units; cnn: two conv blocks")
    train.add_argument("--method", choices=METHODS, default=defaults.method,
                       help="backprop, dni (synthesizers see the activation) or cdni (and the label); default cdni")
    train.add_argument("--layers", type=_positive(int), default=defaults.layers, help="MLP hidden layers")
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
    _add_pipeline_arguments(train)
    _add_common_arguments(train)

    gist = commands.add_parser("gist", help="the seed gist's 784-100-10 MNIST experiment, done right")
    gist_defaults = gist_config().train
    gist.add_argument("--cdni", action="store_true", help="condition the synthesizer on the label")
    gist.add_argument("--synth-every", type=_positive(int), default=gist_defaults.synth_every,
                      help="update the synthesizer every N steps (the gist used 10)")
    gist.add_argument("--synth-lr", type=_positive(float), default=gist_defaults.synth_lr,
                      help=f"synthesizer learning rate (the gist used 1e-4; default {gist_defaults.synth_lr})")
    _add_common_arguments(gist)

    resume = commands.add_parser("resume", help="continue an interrupted run from its newest readable checkpoint")
    resume.add_argument("run_dir", type=Path, help="the run directory (--out) of the interrupted run")
    resume.add_argument("--no-progress", action="store_true", help="no progress bar")

    bench = commands.add_parser("bench", help="run a benchmark and write its table and results.json")
    bench_commands = bench.add_subparsers(dest="benchmark", required=True)
    pipeline_bench = bench_commands.add_parser("pipeline", help="update-unlocked cDNI on K processes vs backprop, "
                                               "GPipe and 1F1B: throughput, accuracy at equal time, time to 97%%")
    bench_defaults = PipelineBenchConfig()
    pipeline_bench.add_argument("--out", type=Path, default=Path("runs/bench-pipeline"),
                                help="results directory; finished runs in it are kept (default runs/bench-pipeline)")
    pipeline_bench.add_argument("--data-dir", help=f"MNIST directory (default ${DATA_ENV}/mnist, else the cache)")
    pipeline_bench.add_argument("--epochs", type=_positive(int), default=bench_defaults.epochs)
    pipeline_bench.add_argument("--layers", type=_positive(int), default=bench_defaults.layers)
    pipeline_bench.add_argument("--width", type=_positive(int), default=bench_defaults.width)
    pipeline_bench.add_argument("--batch-size", type=_positive(int), default=bench_defaults.batch_size)
    pipeline_bench.add_argument("--stages", type=_positive(int), default=bench_defaults.num_stages)
    pipeline_bench.add_argument("--micro-batches", type=_positive(int), default=bench_defaults.micro_batches)
    pipeline_bench.add_argument("--max-staleness", type=_non_negative_int, default=bench_defaults.max_staleness)
    pipeline_bench.add_argument("--seed", type=int, default=bench_defaults.seed)
    pipeline_bench.add_argument("--repeats", type=_positive(int), default=bench_defaults.repeats,
                                help="run every schedule this many times, round-robin, and count the fastest run "
                                "of each (on a shared machine the others measure the other jobs too)")
    pipeline_bench.add_argument("--dry-run", action="store_true", help="a few steps each on stand-in data")
    pipeline_bench.add_argument("--no-progress", action="store_true", help="no progress bar")

    plot = commands.add_parser("plot", help="draw a run directory's curves and figures to PNG files")
    plot.add_argument("run_dir", type=Path, help="a directory written by synthgrad train or gist")
    return parser


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
    stale = [path for path in run_dir.iterdir() if path.name in RUN_FILES or path.suffix == ".png"]
    stale += [path for _, path in list_checkpoints(run_dir)]
    for path in stale:  # --force: nothing of the overwritten run may mix with the new one
        path.unlink()
    return run_dir


def _report(summary: dict[str, Any], run_dir: Path, figures: Sequence[Path]) -> None:
    cosines = [f"{value:.2f}" for key, value in summary.items() if key.startswith("sg/cos/")]
    print(f"test accuracy {summary['test_acc']:.4f} (best {summary['best_test_acc']:.4f}) after "
          f"{summary['steps']} steps, {summary['train_seconds']:.1f} s of training"
          + (f"; synthetic-gradient cosine per cut: {', '.join(cosines)}" if cosines else ""))
    print(f"run directory: {run_dir} (figures: {', '.join(path.name for path in figures)})")


def command_train(args: argparse.Namespace, environ: dict[str, str]) -> None:
    if args.synth_layers < 0:
        raise SynthgradError(f"--synth-layers must be >= 0, got {args.synth_layers}")
    config = ClassifierConfig(
        dataset=args.dataset, data_dir=str(resolve_data_dir(args.dataset, args.data_dir, environ)),
        download=not args.dry_run, model=args.model, method=args.method, layers=args.layers, width=args.width,
        synth_layers=args.synth_layers, synth_width=args.synth_width, synth_rank=args.synth_rank,
        dry_run=args.dry_run,
        train=TrainConfig(
            epochs=args.epochs, steps=DRY_RUN_STEPS if args.dry_run else args.steps, batch_size=args.batch_size,
            lr=args.lr, synth_lr=args.synth_lr, decoupled_lr=args.decoupled_lr or default_decoupled_lr(args.method),
            optimizer=args.optimizer, lr_schedule=args.lr_schedule, use_context=args.method == "cdni",
            seed=args.seed, device=resolve_device(args.device), progress=not args.no_progress,
            log_every=args.log_every, checkpoint_every=args.checkpoint_every,
        ),
    )
    if config.train.checkpoint_every % config.train.log_every:
        raise SynthgradError(f"--checkpoint-every {args.checkpoint_every} must be a multiple of --log-every "
                             f"{args.log_every}, so that a checkpoint never falls inside a metrics interval")
    if args.stages:
        run = PipelineRun(config, PipelineConfig(
            num_stages=args.stages, schedule=args.schedule, max_staleness=args.max_staleness,
            micro_batches=args.micro_batches, timeout_s=args.timeout, threads=args.threads))
        _train_pipeline(run, args.out, f"train-{args.model}-{args.method}-stages{args.stages}", args.force, environ,
                        port=args.port)
        return
    run_dir = prepare_run_dir(args.out, f"train-{args.model}-{args.method}", args.force)
    with _ctrl_c_requests_stop() as stop_requested:
        summary = run_experiment(config, run_dir, on_record=_print_epoch, stop_requested=stop_requested)
    _report(summary, run_dir, plot_run(run_dir))


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
    run_dir = args.run_dir
    if not (run_dir / CONFIG_FILE).is_file():
        raise SynthgradError(f"{run_dir} has no {CONFIG_FILE}: pass the --out directory of a synthgrad train run")
    if (run_dir / SUMMARY_FILE).exists():
        raise SynthgradError(f"{run_dir} holds a finished run; there is nothing to resume")
    try:
        data = json.loads((run_dir / CONFIG_FILE).read_text())
        run = pipeline_run_from_dict(data) if is_pipeline_config(data) else None
        config = run.classifier if run else classifier_config_from_dict(data)
    except (ValueError, TypeError, KeyError) as error:
        raise SynthgradError(f"{run_dir / CONFIG_FILE} is not a synthgrad run configuration ({error})") from None
    if config.model not in MODELS:
        raise SynthgradError(f"{run_dir} is a {config.model!r} run; only synthgrad train runs can be resumed")
    if run is not None:
        run.classifier.train.progress = not args.no_progress
        print(f"resuming {run_dir}: a pipeline of {run.pipeline.num_stages} stages", file=sys.stderr)
        _train_pipeline(run, run_dir, "", False, environ, resume=True)
        return
    checkpoint = load_latest_checkpoint(run_dir)
    if checkpoint is None:
        raise SynthgradError(f"{run_dir} has no readable checkpoint (the run stopped before its first one); "
                             f"start it again with synthgrad train --out {run_dir} --force")
    config.train.progress = not args.no_progress
    print(f"resuming {run_dir} from step {checkpoint['step']}", file=sys.stderr)
    with _ctrl_c_requests_stop() as stop_requested:
        summary = run_experiment(config, run_dir, on_record=_print_epoch, resume=checkpoint,
                                 stop_requested=stop_requested)
    _report(summary, run_dir, plot_run(run_dir))


def command_gist(args: argparse.Namespace, environ: dict[str, str]) -> None:
    method = "cdni" if args.cdni else "dni"
    config = gist_config(method, synth_every=args.synth_every, synth_lr=args.synth_lr, seed=args.seed,
                         device=resolve_device(args.device), progress=False,
                         **({"steps": DRY_RUN_STEPS} if args.dry_run else {}))
    config.data_dir = str(resolve_data_dir("mnist", args.data_dir, environ))
    config.dry_run, config.download = args.dry_run, not args.dry_run
    run_dir = prepare_run_dir(args.out, f"gist-{method}", args.force)
    losses: list[float] = []

    def on_record(record: dict[str, Any]) -> None:
        step = record["step"]
        losses.append(record["train/loss"])
        if "test/acc" in record:
            print(f"iteration {step}: test accuracy {record['test/acc']:.3f}")
        if step % 100 == 0:
            print(f"\titeration {step}: smooth_loss {smooth(losses)[-1]:.3f}, synth_loss {record['sg/loss/0']:.3f}")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of 10 through a 784-100-10 net: threads cost more than they give
    try:
        summary = run_experiment(config, run_dir, model_builder=build_gist_model, on_record=on_record)
    finally:
        torch.set_num_threads(threads)
    _report(summary, run_dir, plot_run(run_dir))


def command_bench(args: argparse.Namespace, environ: dict[str, str]) -> None:
    if args.stages < 2:
        raise SynthgradError(f"--stages {args.stages}: the benchmark compares pipelines of at least 2 stages")
    config = PipelineBenchConfig(
        data_dir=str(resolve_data_dir("mnist", args.data_dir, environ)), layers=args.layers, width=args.width,
        epochs=args.epochs, batch_size=args.batch_size, num_stages=args.stages, micro_batches=args.micro_batches,
        max_staleness=args.max_staleness, seed=args.seed, repeats=args.repeats, dry_run=args.dry_run)
    command = "synthgrad bench pipeline " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["bench", "pipeline"] \
        else "synthgrad bench pipeline"
    run_pipeline(config, args.out, command=command.strip(), progress=not args.no_progress)
    print((args.out / TABLE_FILE).read_text())


def command_plot(args: argparse.Namespace, environ: dict[str, str]) -> None:
    for path in plot_run(args.run_dir):
        print(path)


COMMANDS = {"train": command_train, "gist": command_gist, "resume": command_resume, "plot": command_plot,
            "bench": command_bench}


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
    except SynthgradError as error:
        print(f"synthgrad {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synthgrad {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

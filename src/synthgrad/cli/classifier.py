"""``synthgrad train``, ``gist`` and ``resume``: image classifiers, in one process or as a pipeline of
processes (``--stages``), and continuing an interrupted run."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from synthgrad.checkpoints import checkpoint_path, load_latest_checkpoint, load_states
from synthgrad.cli.arguments import (
    add_common_arguments,
    add_survival_arguments,
    ctrl_c_requests_stop,
    non_negative_int,
    positive,
    prepare_run_dir,
    print_epoch,
    probability,
    rank_or_full,
    report,
    resolve_data_dir,
    resolve_device,
)
from synthgrad.divergence import ON_DIVERGENCE
from synthgrad.errors import InvalidConfig, SynthgradError
from synthgrad.experiments.gist import GIST_MODEL, build_gist_model, gist_config
from synthgrad.experiments.mnist import (
    CONV_CDNI_SYNTH_LR,
    CONV_TRAINING,
    DATASETS,
    DNI_DECOUPLED_LR,
    DRY_RUN_STEPS,
    METHODS,
    MODELS,
    PAPER_TRAINING,
    ClassifierConfig,
    build_model,
    classifier_config_from_dict,
    run_experiment,
    training_defaults,
)
from synthgrad.experiments.validation import validate_classifier_config
from synthgrad.metrics import CONFIG_FILE, SUMMARY_FILE, smooth
from synthgrad.pipeline.config import (
    SCHEDULES,
    PipelineConfig,
    PipelineRun,
    Rendezvous,
    check_pipeline_run,
    is_pipeline_config,
    pipeline_run_from_dict,
)
from synthgrad.pipeline.launch import launch_local
from synthgrad.pipeline.runtime import run_rank
from synthgrad.plots import plot_run
from synthgrad.trainer import LR_SCHEDULES, OPTIMIZERS, TrainConfig, torch_threads


def add_classifier_parsers(commands: Any) -> None:
    """The ``train``, ``gist`` and ``resume`` commands."""
    train = commands.add_parser("train", help="train an image classifier (MNIST, Fashion-MNIST, CIFAR-10) with "
                                "every cut decoupled")
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
    train.add_argument("--layers", type=positive(int),
                       help=f"hidden layers of --model mlp (default {defaults.layers}); the presets fix their depth")
    train.add_argument("--width", type=positive(int), default=defaults.width, help="MLP hidden units")
    train.add_argument("--synth-layers", type=int, default=defaults.synth_layers,
                       help="hidden layers of each DNI synthesizer (cDNI MLP synthesizers are linear)")
    train.add_argument("--synth-width", type=positive(int), default=defaults.synth_width,
                       help="hidden units (MLP) or filters (CNN) of each synthesizer (default 1024 for mlp, "
                       "64 for cnn)")
    train.add_argument("--synth-rank", type=rank_or_full, default=defaults.synth_rank,
                       help="factor each cDNI MLP synthesizer's linear map through this many dimensions; "
                       f"0 for the paper's full map (default {defaults.synth_rank})")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=positive(int), default=train_defaults.epochs)
    length.add_argument("--steps", type=positive(int), help="train for this many steps instead of --epochs")
    train.add_argument("--batch-size", type=positive(int), default=train_defaults.batch_size)
    train.add_argument("--lr", type=positive(float), default=train_defaults.lr, help="learning rate of the blocks")
    train.add_argument("--synth-lr", type=positive(float),
                       help=f"learning rate of the synthesizers (default {train_defaults.synth_lr:g}, "
                       f"{CONV_TRAINING['synth_lr']:g} for the CNNs, {CONV_CDNI_SYNTH_LR:g} for cdni on them)")
    train.add_argument("--decoupled-lr", type=positive(float),
                       help="learning rate of the blocks below the top cut, which learn from synthetic gradients "
                       f"(default {DNI_DECOUPLED_LR:g} for dni but on --model cnn, else --lr)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=train_defaults.optimizer)
    train.add_argument("--log-every", type=positive(int), default=train_defaults.log_every,
                       help="write a metrics record every N steps (and at every evaluation)")
    train.add_argument("--checkpoint-every", type=non_negative_int, default=train_defaults.checkpoint_every,
                       help="write a checkpoint every N steps, a multiple of --log-every; 0 for none "
                       f"(default {train_defaults.checkpoint_every}); resume with `synthgrad resume RUN_DIR`")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=train_defaults.lr_schedule)
    train.add_argument("--warmup-steps", type=non_negative_int,
                       help="scale every learning rate up linearly over the first N steps (default "
                       f"{train_defaults.warmup_steps}, {CONV_TRAINING['warmup_steps']} for the CNNs)")
    train.add_argument("--update-prob", type=probability, default=train_defaults.update_prob,
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
    add_common_arguments(train)
    add_survival_arguments(train, train_defaults)

    gist = commands.add_parser("gist", help="the seed gist's 784-100-10 MNIST experiment, done right")
    gist_defaults = gist_config().train
    gist.add_argument("--cdni", action="store_true", help="condition the synthesizer on the label")
    gist.add_argument("--synth-every", type=positive(int), default=gist_defaults.synth_every,
                      help="update the synthesizer every N steps (the gist used 10)")
    gist.add_argument("--synth-lr", type=positive(float), default=gist_defaults.synth_lr,
                      help=f"synthesizer learning rate (the gist used 1e-4; default {gist_defaults.synth_lr})")
    gist.add_argument("--checkpoint-every", type=non_negative_int, default=gist_defaults.checkpoint_every,
                      help=f"write a checkpoint every N steps; 0 for none (default {gist_defaults.checkpoint_every})")
    add_common_arguments(gist)
    add_survival_arguments(gist, gist_defaults)

    resume = commands.add_parser("resume", help="continue an interrupted run from its newest readable checkpoint")
    resume.add_argument("run_dir", type=Path, help="the run directory (--out) of the interrupted run")
    resume.add_argument("--no-progress", action="store_true", help="no progress bar")
    resume.add_argument("--on-divergence", choices=ON_DIVERGENCE,
                        help="change what a non-finite step does from here on (default: as the run was started)")


def _add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    pipeline = parser.add_argument_group("pipeline (one process per stage on torch.distributed)")
    defaults = PipelineConfig()
    pipeline.add_argument("--stages", type=positive(int), help="split the model into this many stages, one process "
                          "each (started here, or by torchrun when it launched this command)")
    pipeline.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule,
                          help="unlocked (dni/cdni), lockstep (exact pipelined backprop), gpipe or 1f1b "
                          "(torch.distributed.pipelining); auto picks by --method")
    pipeline.add_argument("--max-staleness", type=non_negative_int, default=defaults.max_staleness,
                          help="unlocked: block updates between a synthesizer's prediction and its training "
                          f"on the target (default {defaults.max_staleness})")
    pipeline.add_argument("--micro-batches", type=positive(int), default=defaults.micro_batches,
                          help="lockstep/gpipe/1f1b: micro-batches per mini-batch")
    pipeline.add_argument("--timeout", type=positive(float), default=defaults.timeout_s,
                          help="seconds a rank waits for a message before it declares the sender dead or hung "
                          f"and stops (default {defaults.timeout_s:g})")
    pipeline.add_argument("--threads", type=positive(int), default=defaults.threads,
                          help="torch threads per stage process (default 1)")
    pipeline.add_argument("--port", type=positive(int), help="rendezvous port on 127.0.0.1 (default: a free one)")


def _paper_training(args: argparse.Namespace) -> dict[str, Any]:
    """``--paper``: the paper's optimisation for every option not given explicitly."""
    if not args.paper:
        return {}
    explicit = explicit_options(args)
    paper = {key: value for key, value in PAPER_TRAINING.items() if key not in explicit}
    if "epochs" in explicit:
        paper.pop("steps", None)
    return paper


def _training_options(args: argparse.Namespace) -> dict[str, Any]:
    """The training options of ``train``: those given explicitly, else ``--paper``'s, else the defaults of the
    model and method (``experiments.mnist.training_defaults``), else ``TrainConfig``'s."""
    unset = {name: getattr(TrainConfig(), name) for name, value in vars(args).items()
             if value is None and hasattr(TrainConfig, name)}
    return {**vars(args), **unset, **training_defaults(args.model, args.method), **_paper_training(args),
            **{name: getattr(args, name) for name in explicit_options(args)}}


def command_train(args: argparse.Namespace, environ: dict[str, str]) -> None:
    if args.resume:
        pipeline = _pipeline_run_in(args.out) if args.out is not None else None
        if pipeline is not None:
            return _resume_pipeline(args.out, pipeline, not args.no_progress, environ)
        return _resume_flag(args)
    options = _training_options(args)
    config = ClassifierConfig(
        dataset=args.dataset, data_dir=str(resolve_data_dir(args.dataset, args.data_dir, environ)),
        download=not args.dry_run, model=args.model, method=args.method,
        layers=args.layers or ClassifierConfig.layers, width=args.width, synth_layers=args.synth_layers,
        synth_width=args.synth_width, synth_rank=args.synth_rank, forward_unlock=args.forward_unlock,
        dry_run=args.dry_run,
        train=TrainConfig(
            epochs=args.epochs, steps=DRY_RUN_STEPS if args.dry_run else options["steps"],
            batch_size=options["batch_size"], lr=options["lr"], synth_lr=options["synth_lr"],
            decoupled_lr=options["decoupled_lr"], optimizer=options["optimizer"], lr_schedule=options["lr_schedule"],
            warmup_steps=options["warmup_steps"], update_prob=args.update_prob, use_context=args.method == "cdni",
            seed=args.seed, device=resolve_device(args.device, processes=_processes_here(args, environ)),
            progress=not args.no_progress, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
            on_divergence=args.on_divergence,
        ),
    )
    validate_classifier_config(config, build_model, explicit=explicit_options(args))
    if args.stages:
        run = PipelineRun(config, PipelineConfig(
            num_stages=args.stages, schedule=args.schedule, max_staleness=args.max_staleness,
            micro_batches=args.micro_batches, timeout_s=args.timeout, threads=args.threads))
        _train_pipeline(run, args.out, f"train-{args.model}-{args.method}-stages{args.stages}", args.force, environ,
                        port=args.port)
        return
    _run(config, prepare_run_dir(args.out, f"train-{args.model}-{args.method}", args.force))


def _processes_here(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """How many processes of this run share this machine: torchrun's local world, else ``--stages`` (or 1)."""
    if _torchrun_rendezvous(environ) is not None:
        return int(environ.get("LOCAL_WORLD_SIZE", "1"))
    return args.stages or 1


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
        with ctrl_c_requests_stop(_PIPELINE_STOP) as stop_requested:
            summary = launch_local(run, run_dir, port=port, resume=resume, on_record=print_epoch,
                                   stop_requested=stop_requested)
        report(summary, run_dir, plot_run(run_dir))
        return
    if out is None:
        raise SynthgradError("under torchrun pass --out: every rank must write into the same run directory")
    run_dir = out if resume or rendezvous.rank != 0 else prepare_run_dir(out, default_name, force)
    run.classifier.train.progress = run.classifier.train.progress and rendezvous.rank == 0
    with ctrl_c_requests_stop(_PIPELINE_STOP) as stop_requested:
        summary = run_rank(run, rendezvous, run_dir, resume=resume, on_record=print_epoch,
                           stop_requested=stop_requested)
    if summary is not None:
        report(summary, run_dir, plot_run(run_dir))


_PIPELINE_STOP = "every stage at the next logging step"
"""When a pipeline stops on Ctrl-C: the ranks agree at the end of every logging interval."""


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


def _model_builder(config: ClassifierConfig) -> Callable[[ClassifierConfig], Any]:
    return build_gist_model if config.model == GIST_MODEL else build_model


def _run(config: ClassifierConfig, run_dir: Path, resume: Optional[dict[str, Any]] = None) -> None:
    """Run (or, from the checkpoint ``resume``, continue) a train or gist run and report it; one path
    for both, so that a resumed run does exactly what the first one did."""
    is_gist = config.model == GIST_MODEL
    # the gist's batches of 10 through a 784-100-10 net: threads cost more than they give
    with torch_threads(1 if is_gist else None), ctrl_c_requests_stop() as stop_requested:
        summary = run_experiment(config, run_dir, model_builder=_model_builder(config),
                                 on_record=_gist_printer() if is_gist else print_epoch, resume=resume,
                                 stop_requested=stop_requested)
    report(summary, run_dir, plot_run(run_dir))


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
    explicit = explicit_options(args)
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


def explicit_options(args: argparse.Namespace) -> set[str]:
    """The options of ``args`` whose values differ from the command's defaults (as config field
    names: every option's ``dest`` is its field's name)."""
    from synthgrad.cli.main import build_parser  # here, not at the top: main imports this module

    defaults = vars(build_parser().parse_args([args.command]))
    return {name for name, value in vars(args).items() if value != defaults.get(name)}

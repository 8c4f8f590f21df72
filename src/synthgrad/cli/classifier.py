"""``synthgrad train`` and ``gist``: image classifiers in one process, or as a pipeline of processes
(``--stages``, see ``synthgrad.cli.pipeline``)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Optional

from synthgrad.cli.arguments import (
    add_common_arguments,
    add_survival_arguments,
    explicit_options,
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
from synthgrad.cli.pipeline import add_pipeline_arguments, processes_here, train_pipeline
from synthgrad.engine.config import LR_SCHEDULES, OPTIMIZERS, TrainConfig
from synthgrad.experiments.classifier import run_experiment
from synthgrad.experiments.classifier_config import (
    CONV_CDNI_SYNTH_LR,
    CONV_TRAINING,
    DATASETS,
    DNI_DECOUPLED_LR,
    DRY_RUN_STEPS,
    PAPER_TRAINING,
    ClassifierConfig,
    build_model,
    classifier_config,
    training_defaults,
)
from synthgrad.experiments.gist import GIST_MODEL, build_gist_model, gist_config
from synthgrad.experiments.image_models import METHODS, MODELS
from synthgrad.experiments.validation import validate_classifier_config
from synthgrad.plots import plot_run, smooth


def add_classifier_parsers(commands: Any) -> None:
    """The ``train`` and ``gist`` commands."""
    _add_train_parser(commands)
    gist = commands.add_parser("gist", help="the seed gist's 784-100-10 MNIST experiment, done right")
    gist_defaults = gist_config()
    gist.add_argument("--cdni", action="store_true", help="condition the synthesizer on the label")
    gist.add_argument("--synth-every", type=positive(int), default=gist_defaults.synth_every,
                      help="update the synthesizer every N steps (the gist used 10)")
    gist.add_argument("--synth-lr", type=positive(float), default=gist_defaults.train.synth_lr,
                      help=f"synthesizer learning rate (the gist used 1e-4; default {gist_defaults.train.synth_lr})")
    every = gist_defaults.train.checkpoint_every
    gist.add_argument("--checkpoint-every", type=non_negative_int, default=every,
                      help=f"write a checkpoint every N steps; 0 for none (default {every})")
    add_common_arguments(gist)
    add_survival_arguments(gist, gist_defaults.train)


def _add_train_parser(commands: Any) -> None:
    train = commands.add_parser("train", help="train an image classifier (MNIST, Fashion-MNIST, CIFAR-10) with "
                                "every cut decoupled")
    defaults, train_defaults = ClassifierConfig(), TrainConfig()
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
    train.add_argument("--batch-size", type=positive(int), help=f"default {defaults.batch_size}, "
                       f"{CONV_TRAINING['batch_size']} for the CNNs")
    _add_optimisation_arguments(train, train_defaults)
    train.add_argument("--update-prob", type=probability, default=defaults.update_prob,
                       help="each block updates its weights at a step only with this probability (the "
                       "paper's stochastic updates; synthesizers always learn); default 1")
    train.add_argument("--forward-unlock", action="store_true",
                       help="complete unlock: each block above the first trains on a prediction of its input "
                       "made from the network input (mlp and fcn models)")
    train.add_argument("--paper", action="store_true",
                       help="the paper's optimisation: " + ", ".join(f"{key} {value}" for key, value
                                                                   in PAPER_TRAINING.items())
                       + " (options you give explicitly still win)")
    add_pipeline_arguments(train)
    add_common_arguments(train)
    add_survival_arguments(train, train_defaults)


def _add_optimisation_arguments(train: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    train.add_argument("--lr", type=positive(float), default=defaults.lr, help="learning rate of the blocks")
    train.add_argument("--synth-lr", type=positive(float),
                       help=f"learning rate of the synthesizers (default {defaults.synth_lr:g}, "
                       f"{CONV_TRAINING['synth_lr']:g} for the CNNs, {CONV_CDNI_SYNTH_LR:g} for cdni on them)")
    train.add_argument("--decoupled-lr", type=positive(float),
                       help="learning rate of the blocks below the top cut, which learn from synthetic gradients "
                       f"(default {DNI_DECOUPLED_LR:g} for dni but on --model cnn, else --lr)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    train.add_argument("--log-every", type=positive(int), default=defaults.log_every,
                       help="write a metrics record every N steps (and at every evaluation)")
    train.add_argument("--checkpoint-every", type=non_negative_int, default=defaults.checkpoint_every,
                       help="write a checkpoint every N steps, a multiple of --log-every; 0 for none "
                       f"(default {defaults.checkpoint_every}); resume with `synthgrad resume RUN_DIR`")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=defaults.lr_schedule)
    train.add_argument("--threads", type=positive(int),
                       help="torch threads while training (default: torch's own; 1 per process with --stages)")
    train.add_argument("--warmup-steps", type=non_negative_int,
                       help="scale every learning rate up linearly over the first N steps (default "
                       f"{defaults.warmup_steps}, {CONV_TRAINING['warmup_steps']} for the CNNs)")


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
    """The options of ``train`` that have model-dependent defaults: those given explicitly, else ``--paper``'s,
    else the model and method's (``classifier_config.training_defaults``), else the configs' own."""
    options = {"batch_size": ClassifierConfig.batch_size, "synth_lr": TrainConfig.synth_lr,
               "warmup_steps": TrainConfig.warmup_steps, "decoupled_lr": None, "steps": None, "lr": args.lr,
               "optimizer": args.optimizer, "lr_schedule": args.lr_schedule}
    explicit = {name: getattr(args, name) for name in explicit_options(args) if name in options}
    return {**options, **training_defaults(args.model, args.method), **_paper_training(args), **explicit}


def command_train(args: argparse.Namespace, environ: dict[str, str]) -> None:
    options = _training_options(args)
    config = classifier_config(
        dataset=args.dataset, data_dir=str(resolve_data_dir(args.dataset, args.data_dir, environ)),
        download=not args.dry_run, model=args.model, method=args.method,
        layers=args.layers or ClassifierConfig.layers, width=args.width, synth_layers=args.synth_layers,
        synth_width=args.synth_width, synth_rank=args.synth_rank, forward_unlock=args.forward_unlock,
        dry_run=args.dry_run, update_prob=args.update_prob, seed=args.seed,
        device=resolve_device(args.device, processes=processes_here(args, environ)),
        **{**options, "steps": DRY_RUN_STEPS if args.dry_run else options["steps"]}, epochs=args.epochs,
        progress=not args.no_progress, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
        on_divergence=args.on_divergence, tensorboard=args.tensorboard, threads=args.threads,
    )
    validate_classifier_config(config, build_model, explicit=explicit_options(args))
    if args.stages:
        return train_pipeline(config, args, environ)
    run_classifier(config, prepare_run_dir(args.out, f"train-{args.model}-{args.method}", args.force))


def command_gist(args: argparse.Namespace, environ: dict[str, str]) -> None:
    method = "cdni" if args.cdni else "dni"
    config = gist_config(method, synth_every=args.synth_every, synth_lr=args.synth_lr, seed=args.seed,
                         device=resolve_device(args.device), progress=False, checkpoint_every=args.checkpoint_every,
                         on_divergence=args.on_divergence, tensorboard=args.tensorboard,
                         data_dir=str(resolve_data_dir("mnist", args.data_dir, environ)), dry_run=args.dry_run,
                         download=not args.dry_run, **({"steps": DRY_RUN_STEPS} if args.dry_run else {}))
    validate_classifier_config(config, build_gist_model)
    run_classifier(config, prepare_run_dir(args.out, f"gist-{method}", args.force))


def model_builder(config: ClassifierConfig) -> Callable[[ClassifierConfig], Any]:
    """What builds the network of ``config``: the gist's, or one of ``synthgrad train``'s."""
    return build_gist_model if config.model == GIST_MODEL else build_model


def run_classifier(config: ClassifierConfig, run_dir: Path, resume: Optional[dict[str, Any]] = None) -> None:
    """Run (or, from the checkpoint ``resume``, continue) a train or gist run and report it; one path
    for both, so that a resumed run does exactly what the first one did. Ctrl-C stops it after the
    current step with a checkpoint (``synthgrad.engine.train``)."""
    is_gist = config.model == GIST_MODEL
    summary = run_experiment(config, run_dir, model_builder=model_builder(config),
                             on_record=_gist_printer() if is_gist else print_epoch, resume=resume)
    report(summary, run_dir, plot_run(run_dir))


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

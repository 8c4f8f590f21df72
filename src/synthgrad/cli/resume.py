"""``synthgrad resume RUN_DIR`` and ``--resume``: continue an interrupted train or gist run (one process or a
pipeline) from its newest readable checkpoint, with the options it was started with."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from synthgrad.checkpoints import CheckpointMismatch, checkpoint_path, load_latest_checkpoint, load_states
from synthgrad.cli.arguments import explicit_options
from synthgrad.cli.classifier import model_builder, run_classifier
from synthgrad.cli.pipeline import pipeline_run_in, resume_pipeline
from synthgrad.cli.rnn import is_rnn_run, resume_rnn
from synthgrad.engine.records import CONFIG_FILE, SUMMARY_FILE
from synthgrad.errors import InvalidConfig, SynthgradError
from synthgrad.experiments.classifier_config import ClassifierConfig, classifier_config_from_dict
from synthgrad.experiments.gist import GIST_MODEL
from synthgrad.experiments.validation import validate_classifier_config


def command_resume(args: argparse.Namespace, environ: dict[str, str]) -> None:
    pipeline = pipeline_run_in(args.run_dir)
    if pipeline is not None:
        return resume_pipeline(args.run_dir, pipeline, not args.no_progress, environ)
    if is_rnn_run(args.run_dir):
        return resume_rnn(args.run_dir, progress=not args.no_progress, on_divergence=args.on_divergence)
    _resume(args.run_dir, progress=not args.no_progress, on_divergence=args.on_divergence)


_RESUME_KEEPS = {"command", "resume", "out", "no_progress", "on_divergence"}
"""What may be given with ``--resume``; everything else comes from the run's ``config.json``. A run that
diverged can go on past that step with ``--on-divergence skip``: nothing else changes until a step
would be skipped."""


def resume_flag(args: argparse.Namespace, environ: dict[str, str]) -> None:
    """``synthgrad <command> --resume --out RUN_DIR``: ``synthgrad resume RUN_DIR``, for a run of this
    command only, and without options that would contradict the run's own."""
    if args.out is None:
        raise SynthgradError("--resume needs --out RUN_DIR, the directory of the run to continue")
    pipeline = pipeline_run_in(args.out)
    if pipeline is not None:
        return resume_pipeline(args.out, pipeline, not args.no_progress, environ)
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
    run_classifier(config, run_dir, resume=checkpoint)


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
        validate_classifier_config(config, model_builder(config))
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
    with torch.random.fork_rng(devices=[]):  # the engine checks again; this says so before any work
        try:
            load_states(checkpoint, checkpoint_path(run_dir, checkpoint["step"]), model=model_builder(config)(config))
        except CheckpointMismatch as error:
            raise SynthgradError(f"{error} with --force") from None
    return config, checkpoint

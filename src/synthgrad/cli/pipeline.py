"""``synthgrad train --stages K``: an image classifier trained as a pipeline of K processes, started here or
by torchrun, and resumed; the pipeline's options."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from synthgrad.cli.arguments import non_negative_int, positive, prepare_run_dir, print_epoch, report
from synthgrad.engine.interrupts import ctrl_c_requests_stop
from synthgrad.engine.records import CONFIG_FILE, SUMMARY_FILE
from synthgrad.errors import SynthgradError
from synthgrad.experiments.classifier_config import ClassifierConfig
from synthgrad.experiments.pipeline_classifier import (
    PipelineRun,
    check_pipeline_run,
    is_pipeline_config,
    launch_pipeline_run,
    pipeline_run_from_dict,
    train_rank,
)
from synthgrad.pipeline import SCHEDULES, PipelineConfig, Rendezvous
from synthgrad.plots import plot_run


def train_pipeline(config: ClassifierConfig, args: argparse.Namespace, environ: dict[str, str]) -> None:
    """``synthgrad train --stages K``: ``config`` trained as a pipeline of K processes."""
    run = PipelineRun(config, PipelineConfig(
        num_stages=args.stages, schedule=args.schedule, max_staleness=args.max_staleness,
        micro_batches=args.micro_batches, timeout_s=args.timeout))
    _launch(run, args.out, f"train-{args.model}-{args.method}-stages{args.stages}", args.force, environ,
            port=args.port)


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
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
    pipeline.add_argument("--port", type=positive(int), help="rendezvous port on 127.0.0.1 (default: a free one)")


def processes_here(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """How many processes of this run share this machine: torchrun's local world, else ``--stages`` (or 1)."""
    if torchrun_rendezvous(environ) is not None:
        return int(environ.get("LOCAL_WORLD_SIZE", "1"))
    return args.stages or 1


def torchrun_rendezvous(environ: dict[str, str]) -> Optional[Rendezvous]:
    """This process's place in a job started by torchrun (its standard environment variables), or ``None``."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    return Rendezvous(addr=environ.get("MASTER_ADDR", ""), port=int(environ.get("MASTER_PORT", "0")),
                      rank=int(environ["RANK"]), world_size=int(environ["WORLD_SIZE"]),
                      local_rank=int(environ.get("LOCAL_RANK", "0")), use_env=True)


def _launch(run: PipelineRun, out: Optional[Path], default_name: str, force: bool, environ: dict[str, str], *,
            port: Optional[int] = None, resume: bool = False) -> None:
    """Train ``run`` as a pipeline: every rank in this process under torchrun, else K local processes."""
    check_pipeline_run(run)  # a bad option stops here, before a directory or a process is made
    rendezvous = torchrun_rendezvous(environ)
    if rendezvous is None:
        run_dir = out if resume else prepare_run_dir(out, default_name, force)
        with ctrl_c_requests_stop(_PIPELINE_STOP) as stop_requested:
            summary = launch_pipeline_run(run, run_dir, port=port, resume=resume, on_record=print_epoch,
                                          stop_requested=stop_requested)
        report(summary, run_dir, plot_run(run_dir))
        return
    if out is None:
        raise SynthgradError("under torchrun pass --out: every rank must write into the same run directory")
    run_dir = out if resume or rendezvous.rank != 0 else prepare_run_dir(out, default_name, force)
    with ctrl_c_requests_stop(_PIPELINE_STOP) as stop_requested:
        summary = train_rank(run, run_dir, rendezvous, stop_requested, resume=resume, on_record=print_epoch)
    if summary is not None:
        report(summary, run_dir, plot_run(run_dir))


_PIPELINE_STOP = "every stage at the next logging step"
"""When a pipeline stops on Ctrl-C: the ranks agree at the end of every logging interval."""


def pipeline_run_in(run_dir: Path) -> Optional[PipelineRun]:
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


def resume_pipeline(run_dir: Path, run: PipelineRun, progress: bool, environ: dict[str, str]) -> None:
    if (run_dir / SUMMARY_FILE).exists():
        raise SynthgradError(f"{run_dir} holds a finished run; there is nothing to resume")
    run.classifier.train.progress = progress
    print(f"resuming {run_dir}: a pipeline of {run.pipeline.num_stages} stages", file=sys.stderr)
    _launch(run, run_dir, "", False, environ, resume=True)



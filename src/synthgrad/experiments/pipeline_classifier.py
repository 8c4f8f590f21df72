"""An image classifier trained as a pipeline of processes (``synthgrad train --stages K``): the run's
configuration (``PipelineRun``), its checks, and what each rank hands the pipeline: the model every rank
builds alike, where it is cut, and this rank's part of every batch.

Labels are not sent along the pipeline: every rank draws the same batch order from (seed, epoch)
(``engine.classification.epoch_order``), so the first rank indexes the images, the last the labels, and the
ranks with a cDNI synthesizer the one-hot labels of the same examples.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from synthgrad.engine.classification import Split, epoch_order
from synthgrad.errors import InvalidConfig
from synthgrad.experiments.classifier import load_splits
from synthgrad.experiments.classifier_config import (
    NUM_CLASSES,
    ClassifierConfig,
    build_model,
    classifier_config_from_dict,
)
from synthgrad.experiments.validation import validate_classifier_config
from synthgrad.pipeline import SCHEDULES, PipelineConfig, RankSetup, Rendezvous, StageData, launch_local, run_rank
from synthgrad.pipeline.config import check_pipeline_config, resolve_schedule
from synthgrad.pipeline.split import stage_groups

PIPELINE_METHODS = ("backprop", "dni", "cdni")
"""The methods a pipeline trains: backprop with an exact schedule, DNI and cDNI update-unlocked."""
EVAL_BATCH = 1000
DRY_RUN_EXAMPLES = (1024, 512)
"""Training and test examples of a dry run, as in one process."""


@dataclass
class PipelineRun:
    """A classifier experiment trained as a pipeline; ``config.json`` holds ``asdict`` of it. Its records
    keep ``train/seconds`` (``record_seconds``): a pipeline's timeline is what its benchmark compares."""

    classifier: ClassifierConfig
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def __post_init__(self) -> None:
        self.classifier = replace(self.classifier, train=replace(self.classifier.train, record_seconds=True))


def pipeline_run_from_dict(data: dict[str, Any]) -> PipelineRun:
    """The inverse of ``asdict`` on a ``PipelineRun``, e.g. for a run's ``config.json``."""
    return PipelineRun(classifier_config_from_dict(data["classifier"]), PipelineConfig(**data["pipeline"]))


def is_pipeline_config(data: dict[str, Any]) -> bool:
    """Whether a run's ``config.json`` describes a pipeline run."""
    return "pipeline" in data and "classifier" in data


def comparable_config(run: PipelineRun) -> dict[str, Any]:
    """The part of a run's config that every rank must share (where the data lies and whether progress
    is shown may differ between machines)."""
    data = asdict(run)
    data["classifier"]["train"].pop("progress")
    data["classifier"].pop("data_dir")
    return data


def check_pipeline_run(run: PipelineRun, *, min_stages: int = 2) -> list[range]:
    """Raise ``InvalidConfig`` naming the field at fault if ``run`` cannot be trained as a pipeline; returns
    the stages' block groups. ``min_stages=1`` admits the one-process run that benchmarks time
    single-process backprop with."""
    classifier, pipeline = run.classifier, run.pipeline
    validate_classifier_config(classifier, build_model)
    if classifier.method not in PIPELINE_METHODS:
        raise InvalidConfig(f"{{0}} {classifier.method} cannot be split into stages: use "
                            f"{', '.join(PIPELINE_METHODS)}", "method")
    for name, value, alone in (("forward_unlock", classifier.forward_unlock, False),
                               ("update_prob", classifier.update_prob, 1.0)):
        if value != alone:
            raise InvalidConfig("{0} is for one process: leave it out with {1}", name, "num_stages")
    has_synthesizers = classifier.method != "backprop"
    schedule = resolve_schedule(pipeline.schedule, has_synthesizers)
    if schedule == "unlocked" and not has_synthesizers:
        raise InvalidConfig("{0} unlocked needs synthesizers at the stage boundaries: use {1} dni or cdni, "
                            "or {0} lockstep/gpipe/1f1b for backprop", "schedule", "method")
    if schedule in SCHEDULES and schedule != "unlocked" and has_synthesizers:
        raise InvalidConfig(f"{{0}} {schedule} is exact backprop and trains no synthesizers: use {{1}} backprop, "
                            f"or {{0}} unlocked for {classifier.method}", "schedule", "method")
    check_pipeline_config(pipeline, classifier.train, batch_size=classifier.batch_size,
                          has_synthesizers=has_synthesizers, min_stages=min_stages)
    return stage_groups(build_model(classifier), pipeline.num_stages)


def launch_pipeline_run(run: PipelineRun, run_dir: Path, *, port: Optional[int] = None, addr: str = "127.0.0.1",
                        resume: bool = False, on_record: Optional[Callable[[dict[str, Any]], None]] = None,
                        stop_requested: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Train ``run`` as ``run.pipeline.num_stages`` processes on this machine (``synthgrad.pipeline.launch_local``)
    into ``run_dir``; returns the summary. ``on_record`` (picklable) sees every record, in rank 0's process."""
    check_pipeline_run(run, min_stages=1)
    entry = functools.partial(train_rank, run, Path(run_dir), resume=resume, on_record=on_record)
    return launch_local(entry, run.pipeline.num_stages, Path(run_dir), timeout_s=run.pipeline.timeout_s, port=port,
                        addr=addr, stop_requested=stop_requested)


def train_rank(run: PipelineRun, run_dir: Path, rendezvous: Rendezvous,
               stop_requested: Optional[Callable[[], bool]] = None, *, resume: bool = False,
               on_record: Optional[Callable[[dict[str, Any]], None]] = None) -> Optional[dict[str, Any]]:
    """Train rank ``rendezvous.rank`` of ``run`` in this process (a launched process, or one of torchrun's);
    returns the summary on rank 0. See ``synthgrad.pipeline.run_rank``."""
    groups = check_pipeline_run(run, min_stages=1)
    return run_rank(functools.partial(_rank_setup, run, groups), rendezvous, run_dir, pipeline=run.pipeline,
                    train_config=run.classifier.train, device=run.classifier.device, config=asdict(run),
                    comparable=comparable_config(run), resume=resume, on_record=on_record,
                    stop_requested=stop_requested)


def _rank_setup(run: PipelineRun, groups: list[range], rank: int, device: torch.device) -> RankSetup:
    """What rank ``rank`` trains on: the whole model (built from the run's seed, so alike on every rank) and
    the parts of the data it draws, on ``device``."""
    classifier = run.classifier
    train_split, test_split, _ = load_splits(classifier.dataset, classifier.data_dir, download=classifier.download,
                                             dry_run=classifier.dry_run)
    if classifier.dry_run:
        train_split = Split(*(tensor[:DRY_RUN_EXAMPLES[0]] for tensor in train_split))
        test_split = Split(*(tensor[:DRY_RUN_EXAMPLES[1]] for tensor in test_split))
    if classifier.batch_size > len(train_split.labels):
        raise InvalidConfig(f"{{0}} {classifier.batch_size} is larger than the {len(train_split.labels)} training "
                            "examples; choose a smaller one", "batch_size")
    torch.manual_seed(classifier.seed)
    model = build_model(classifier)
    is_first, is_last = rank == 0, rank == run.pipeline.num_stages - 1
    batches = _Batches(classifier.seed, classifier.batch_size, len(train_split.labels), device)
    images = train_split.inputs.to(device) if is_first else None
    labels = train_split.labels.to(device)
    contexts = (nn.functional.one_hot(labels, NUM_CLASSES).float()  # (N, classes), once
                if classifier.use_context and not is_last else None)
    data = StageData(
        classifier.batch_size, batches.steps_per_epoch,
        inputs=None if images is None else (lambda step: images[batches.indices(step)]),
        targets=lambda step: labels[batches.indices(step)],
        context=None if contexts is None else (lambda step: contexts[batches.indices(step)]),
        eval_inputs=lambda: test_split.inputs.split(EVAL_BATCH),
        eval_targets=lambda: test_split.labels.split(EVAL_BATCH))
    return RankSetup(model, groups, data, example_input=train_split.inputs[:2], loss_fn=nn.functional.cross_entropy,
                     metrics_fn=_accuracy, synth_every=classifier.synth_every,
                     run_info={"method": classifier.method, "model": classifier.model, "dataset": classifier.dataset})


def _accuracy(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    return {"acc": (logits.argmax(dim=1) == labels).float().mean()}


class _Batches:
    """The examples of every step: ``epoch_order`` of its epoch, cut into batches (the last partial one of
    an epoch dropped), as in one process."""

    def __init__(self, seed: int, batch_size: int, num_examples: int, device: torch.device) -> None:
        self.seed, self.batch_size, self.num_examples, self.device = seed, batch_size, num_examples, device
        self.steps_per_epoch = num_examples // batch_size
        self._order: tuple[int, Optional[Tensor]] = (-1, None)

    def indices(self, step: int) -> Tensor:
        """The indices of the training examples of ``step`` ``(batch_size,)``."""
        epoch, batch = divmod(step, self.steps_per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.seed, epoch, self.num_examples).to(self.device))
        return self._order[1][batch * self.batch_size:(batch + 1) * self.batch_size]

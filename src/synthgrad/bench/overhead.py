"""``synthgrad bench overhead``: what synthgrad costs beyond the method itself, on the default MNIST MLP.

One epoch of four runs, in turn, for ``rounds`` rounds: a plain PyTorch loop (the same network, the same
batches in the same order, the same fused Adam and cosine schedule, nothing else) without cuts and with
the cDNI cuts of ``synthgrad train`` (the loop a user writes around synthgrad's modules), and ``synthgrad
train --method backprop`` and ``--method cdni`` (every cut decoupled). synthgrad's time is its
``train_seconds`` (the engine's steps: the divergence guard, the records' statistics and everything a step
does, but not evaluation or checkpoints, which the plain loops do not do either). The table gives the
median seconds per epoch of each, and the ratios that separate what the engine costs (each synthgrad run
against its plain loop) from what decoupling every cut costs (the plain loops against each other).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from synthgrad.bench.report import markdown_table, write_report
from synthgrad.engine.classification import Split, epoch_order
from synthgrad.engine.optim import lr_multiplier
from synthgrad.experiments.classifier import load_splits, run_experiment
from synthgrad.experiments.classifier_config import (
    DRY_RUN_STEPS,
    NUM_CLASSES,
    ClassifierConfig,
    build_model,
    classifier_config,
)

RUNS = ("plain", "plain-cdni", "backprop", "cdni")
RATIOS = {"backprop_over_plain": ("backprop", "plain"), "cdni_over_plain_cdni": ("cdni", "plain-cdni"),
          "cdni_over_backprop": ("cdni", "backprop"), "plain_cdni_over_plain": ("plain-cdni", "plain")}
"""Each ratio of the table: the median over the rounds of one run's seconds over another's in the same round
(the machine's speed drifts between rounds more than between the runs of one round)."""


@dataclass
class OverheadBenchConfig:
    """``rounds`` rounds of one epoch of each run, on the default ``synthgrad train`` MLP."""

    data_dir: str = ""
    rounds: int = 3
    dry_run: bool = False


def plain_loop(config: ClassifierConfig, train_split: Split, steps: Optional[int] = None) -> float:
    """Seconds of one epoch (or ``steps`` steps) of the loop a PyTorch user writes: the network ``config``
    names (for cDNI handed the one-hot labels as its context), Adam, the cosine schedule, batches in the
    engine's order. Returns the wall time of the loop alone."""
    torch.manual_seed(config.seed)
    model = build_model(config).train()
    contexts = nn.functional.one_hot(train_split.labels, NUM_CLASSES).float() if config.use_context else None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr, fused=True)
    steps_per_epoch = len(train_split.labels) // config.batch_size
    steps = steps or config.train.steps or steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(config.train, steps))
    orders = [epoch_order(config.seed, epoch, len(train_split.labels)) for epoch in range(-(-steps // steps_per_epoch))]
    started = time.perf_counter()
    for step in range(steps):
        epoch, batch = divmod(step, steps_per_epoch)
        index = orders[epoch][batch * config.batch_size:(batch + 1) * config.batch_size]
        inputs = train_split.inputs[index]
        logits = model(inputs) if contexts is None else model(inputs, contexts[index])
        loss = nn.functional.cross_entropy(logits, train_split.labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - started


def operators_per_step(config: ClassifierConfig, train_split: Split, steps: int = 50) -> dict[str, float]:
    """How many ATen operators one step of ``plain_loop`` runs, and their processor milliseconds (the
    profiler's self time): small operators cost about the same whatever their size, so their count is what
    a cut adds when its synthesizer's arithmetic is small."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        plain_loop(config, train_split, steps)
    operators = [event for event in profile.key_averages() if event.key.startswith("aten::")]
    return {"operators": sum(event.count for event in operators) / steps,
            "cpu_ms": sum(event.self_cpu_time_total for event in operators) / 1000 / steps}


def run_overhead(config: OverheadBenchConfig, out_dir: Path, *, command: str = "synthgrad bench overhead",
                 progress: bool = True) -> dict[str, Any]:
    """Run every round and write ``results.json`` and ``overhead.md`` into ``out_dir``; returns the results:
    each run's seconds per epoch (every round and the median), the ratios (``RATIOS``) and the operators
    each plain loop runs per step."""
    out_dir = Path(out_dir)
    train_split, _, _ = load_splits("mnist", config.data_dir, download=not config.dry_run, dry_run=config.dry_run)
    runs: dict[str, Callable[[int], float]] = {
        "plain": lambda round_: plain_loop(_classifier(config, "backprop"), train_split),
        "plain-cdni": lambda round_: plain_loop(_classifier(config, "cdni"), train_split),
        "backprop": lambda round_: _engine_seconds(config, "backprop", out_dir / f"backprop-{round_}"),
        "cdni": lambda round_: _engine_seconds(config, "cdni", out_dir / f"cdni-{round_}"),
    }
    seconds: dict[str, list[float]] = {name: [] for name in RUNS}
    for round_ in tqdm(range(config.rounds), desc="overhead bench", unit="round", disable=not progress):
        for name in RUNS:  # in turn, so that every run sees the same drift of the machine
            seconds[name].append(runs[name](round_))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    operators = {name: operators_per_step(_classifier(config, method), train_split)
                 for name, method in (("plain", "backprop"), ("plain-cdni", "cdni"))}
    results = {"seconds_per_epoch": seconds, "median_seconds_per_epoch": medians,
               **{name: _median_ratio(seconds[over], seconds[under]) for name, (over, under) in RATIOS.items()},
               "operators_per_step": operators,
               "threads": torch.get_num_threads(), "command": command, "config": asdict(config)}
    write_report(out_dir, "overhead", command, results, [_table(results, config)])
    return results


def _median_ratio(over: list[float], under: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(over, under, strict=True))


def _classifier(config: OverheadBenchConfig, method: str) -> ClassifierConfig:
    return classifier_config(method=method, data_dir=config.data_dir, download=not config.dry_run,
                             dry_run=config.dry_run, epochs=1, steps=DRY_RUN_STEPS if config.dry_run else None,
                             progress=False, checkpoint_every=0)


def _engine_seconds(config: OverheadBenchConfig, method: str, run_dir: Path) -> float:
    return run_experiment(_classifier(config, method), run_dir, on_note=lambda note: None)["train_seconds"]


def _table(results: dict[str, Any], config: OverheadBenchConfig) -> str:
    medians, seconds = results["median_seconds_per_epoch"], results["seconds_per_epoch"]
    rows = [[name, f"{medians[name]:.2f}", " ".join(f"{value:.2f}" for value in seconds[name])] for name in RUNS]
    threads = results["threads"]
    return (f"Default MNIST MLP (3 x 256), one epoch per run, {config.rounds} rounds, {threads} torch "
            f"thread{'s' if threads > 1 else ''}; ratios are medians of each round's ratio.\n\n"
            + markdown_table(["run", "s / epoch (median)", "each round"], rows)
            + f"\nThe engine: synthgrad train --method backprop / plain loop {results['backprop_over_plain']:.2f}x, "
            f"--method cdni / plain loop with the cuts {results['cdni_over_plain_cdni']:.2f}x. Decoupling every "
            f"cut: --method cdni / --method backprop {results['cdni_over_backprop']:.2f}x, of which the cuts "
            f"themselves (plain loops) {results['plain_cdni_over_plain']:.2f}x.\n\n"
            + "ATen operators per step (their processor ms, torch.profiler): "
            + ", ".join(f"{name} {ops['operators']:.0f} ({ops['cpu_ms']:.2f} ms)"
                        for name, ops in results["operators_per_step"].items()) + ".\n")

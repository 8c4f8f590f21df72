"""Where the ranks of `synthgrad bench pipeline`'s update-unlocked run spend their processor time.

    python benchmarks/pipeline_cpu.py [--steps 468] [--repeats 3] [--schedule unlocked|backprop]

Runs the benchmark's unlocked cell (or its one-process backprop cell) for ``--steps`` steps and prints,
per rank, the processor time per training sample of the whole process and of gloo's network thread
(``gloo_tcp_loop``), and the wall time per sample, counting the training loop only (evaluation is
subtracted). Processor time is what to compare on a shared machine: wall time there measures the
other jobs too. Writes nothing but its run directories under ``--runs``.
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from synthgrad.bench.pipeline import PipelineBenchConfig, _pipeline_run
from synthgrad.cli import resolve_data_dir
from synthgrad.pipeline import runtime
from synthgrad.pipeline.config import Rendezvous
from synthgrad.pipeline.launch import free_port

_NETWORK_THREAD = "gloo_tcp_loop"


def _thread_seconds(name: str) -> float:
    """Processor seconds of this process's threads called ``name`` so far."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == name:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


def _rank(run: Any, rendezvous: Rendezvous, run_dir: str, out: str) -> None:
    """One rank, with its training loop and evaluation clocked."""
    clocks = {name: [0.0, 0.0, 0.0] for name in ("train", "eval")}  # process, network thread, wall seconds

    def clocked(name: str, method: Any) -> Any:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = (time.process_time(), _thread_seconds(_NETWORK_THREAD), time.perf_counter())
            try:
                return method(*args, **kwargs)
            finally:
                end = (time.process_time(), _thread_seconds(_NETWORK_THREAD), time.perf_counter())
                clocks[name] = [total + stop - begin for total, begin, stop in zip(clocks[name], start, end)]
        return wrapper

    runtime._RankTrainer.train = clocked("train", runtime._RankTrainer.train)
    runtime._RankTrainer._evaluate = clocked("eval", runtime._RankTrainer._evaluate)
    runtime.run_rank(run, rendezvous, Path(run_dir))
    Path(out).write_text(json.dumps([train - evaluation for train, evaluation in zip(clocks["train"], clocks["eval"])]))


def measure(schedule: str, steps: int, data_dir: str, runs: Path, dry_run: bool) -> list[list[float]]:
    """Per rank: (process, network thread, wall) microseconds per training sample."""
    config = PipelineBenchConfig(data_dir=data_dir, dry_run=dry_run)
    run = _pipeline_run(config, schedule)
    if not dry_run:
        run.classifier.train.steps = steps
    num_stages = run.pipeline.num_stages
    context = multiprocessing.get_context("spawn")
    port = free_port()
    outs = [runs / f"{schedule}-rank{rank}.json" for rank in range(num_stages)]
    processes = [context.Process(target=_rank, args=(run, Rendezvous("127.0.0.1", port, rank, num_stages),
                                                     str(runs / schedule), str(out)))
                 for rank, out in enumerate(outs)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    if any(process.exitcode for process in processes):
        raise SystemExit(f"a rank of the {schedule} run failed (its message is above)")
    samples = run.classifier.train.steps * run.classifier.train.batch_size
    return [[seconds * 1e6 / samples for seconds in json.loads(out.read_text())] for out in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedule", choices=("unlocked", "backprop"), default="unlocked")
    parser.add_argument("--steps", type=int, default=468, help="training steps per run (default: one epoch)")
    parser.add_argument("--repeats", type=int, default=1, help="runs in a row; each prints its line")
    parser.add_argument("--data-dir", help="MNIST directory (default: $SYNTHGRAD_DATA/mnist, else the cache)")
    parser.add_argument("--runs", type=Path, default=Path("runs/pipeline-cpu"), help="where the run directories go")
    parser.add_argument("--dry-run", action="store_true", help="a few steps on stand-in data, to check the script")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    data_dir = str(resolve_data_dir("mnist", args.data_dir, dict(os.environ)))
    for _ in range(args.repeats):
        ranks = measure(args.schedule, args.steps, data_dir, args.runs, args.dry_run)
        print(f"{args.schedule}: " + " | ".join(
            f"rank {rank}: cpu {process:.1f} us/sample (network thread {network:.1f}), wall {wall:.1f} us/sample"
            for rank, (process, network, wall) in enumerate(ranks)), flush=True)


if __name__ == "__main__":
    main()

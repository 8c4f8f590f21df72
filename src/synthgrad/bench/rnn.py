"""``synthgrad bench rnn``: the DNI paper's recurrent results (arXiv 1608.05343, section 3.1, table 1)
measured here, beside the paper's numbers.

Copy and Repeat Copy: the longest sequence length solved (curriculum, ``synthgrad.experiments.curriculum``)
for truncations T = 2, 3, 4, 5 with BPTT, DNI and DNI+Aux, each cell a run of ``steps`` batches. Language
model: validation bits per character against characters seen, for BPTT and DNI at several T.

Writes into ``out_dir``: ``cells/<name>-seed<S>/`` (one run directory per cell and seed; a run whose
``summary.json`` exists for the same configuration is not run again, so an interrupted bench resumes),
and through ``synthgrad.bench.report`` ``results.json`` and ``rnn.md`` (the tables; the first line
names the command), plus ``bpc_vs_chars.png``.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from tqdm.auto import tqdm

from synthgrad.data.text import load_text
from synthgrad.experiments.rnn import RNNConfig, run_rnn_experiment
from synthgrad.experiments.rnn_config import LSTM_LR, rnn_config
from synthgrad.bench.report import RESULTS_FILE, markdown_table, seed_medians, seeds_phrase, write_report
from synthgrad.engine.records import CONFIG_FILE, SUMMARY_FILE, clear_run_files, read_metrics

TRUNCATIONS = (2, 3, 4, 5)
METHODS = ("bptt", "dni", "dni-aux")
METHOD_NAMES = {"bptt": "BPTT", "dni": "DNI", "cdni": "cDNI", "dni-aux": "DNI + Aux"}
PAPER_LENGTHS = {
    "copy": {"bptt": (7, 8, 10, 8), "dni": (16, 14, 18, 18)},
    "repeat-copy": {"bptt": (7, 5, 19, 23), "dni": (39, 33, 39, 59)},
}
"""Table 1 of the paper: the longest length solved for T = 2, 3, 4, 5 (DNI+Aux is not quoted here)."""
LM_RUNS = (("bptt", 8), ("dni", 8), ("cdni", 8), ("dni-aux", 8), ("bptt", 16), ("bptt", 32))
"""(method, T) of the language-model curves: the issue's comparison is DNI T=8 against BPTT T=8 and T=32."""


@dataclass
class RNNBenchConfig:
    """The bench's cells and budgets. ``steps``: batches per Copy / Repeat Copy cell; ``lm_steps``:
    windows of ``lm_window`` characters per language-model run; ``text``: ``None`` skips the LM.

    20000 batches: at 4000 every truncated cell stopped at the first length whose dependency crosses a
    chunk boundary, before DNI had got past it (``benchmarks/results/rnn/training_speed.md``)."""

    steps: int = 20000
    lm_steps: int = 8000
    text: Optional[str] = None
    tasks: tuple[str, ...] = ("copy", "repeat-copy")
    truncations: tuple[int, ...] = TRUNCATIONS
    methods: tuple[str, ...] = METHODS
    hidden_dim: int = RNNConfig.hidden_dim
    batch_size: int = RNNConfig.batch_size
    """The LSTM's units and the batch of the Copy / Repeat Copy cells: at 256 units and batches of 256 DNI
    solved Copy about as far and Repeat Copy less far, at several times the cost per cell
    (``benchmarks/results/rnn/copy_repeat_copy_256_units_batch_256.md``)."""
    lr: float = LSTM_LR
    """Adam's learning rate for the LSTM of the Copy / Repeat Copy cells (the language model keeps
    ``LSTM_LR``): neither 1e-3 nor 3e-3 gives DNI the lead in every cell
    (``benchmarks/results/rnn/copy_repeat_copy_lr_1e-3.md``)."""
    lm_runs: tuple[tuple[str, int], ...] = LM_RUNS
    lm_hidden_dim: int = 256
    lm_eval_every: int = 500
    lm_window: int = 64
    lm_squash_cell: bool = True
    lm_dropout: float = 0.25
    """The language model's protocol: an LSTM of 256 at Adam 3e-3 on 32 streams, windows of 64, dropout
    0.25 on its outputs, 8000 windows (16.4 M characters). Without dropout the LSTM overfits Tiny
    Shakespeare's 1 M training characters after about 3000 windows; smaller or shorter runs leave no T=8 /
    T=32 gap to close (``benchmarks/results/rnn/charlm_protocol.md``, ``charlm_dropout.md``)."""
    seeds: tuple[int, ...] = (0,)
    """One run per seed in every cell; the tables give the median (and, with several, each seed's value)."""
    dry_run: bool = False
    progress: bool = True


def _cell(run_dir: Path, config: RNNConfig, **options: Any) -> dict[str, Any]:
    """The summary of the run in ``run_dir``: read back when a finished run of the same configuration is
    there, else from running it (again: an interrupted or differently configured one starts over)."""
    if (run_dir / SUMMARY_FILE).is_file() and (run_dir / CONFIG_FILE).is_file():
        if json.loads((run_dir / CONFIG_FILE).read_text()) == json.loads(json.dumps(asdict(config))):
            return json.loads((run_dir / SUMMARY_FILE).read_text())
    if run_dir.is_dir():
        clear_run_files(run_dir)
    return run_rnn_experiment(config, run_dir, **options)


def run_rnn(config: RNNBenchConfig, out_dir: Path, command: str = "synthgrad bench rnn") -> dict[str, Any]:
    """Run every missing cell (one run per seed) and write the results; returns ``{"sequence": [...],
    "charlm": [...], "table": markdown, "files": [paths]}``, each row holding every seed's value and their
    median (``synthgrad.bench.report.seed_medians``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sequence_cells = [(task, method, truncation) for task in config.tasks for method in config.methods
                      for truncation in config.truncations]
    lm_cells = list(config.lm_runs) if config.text else []
    corpus = load_text(Path(config.text)) if lm_cells else None
    sequence, charlm = [], []
    with tqdm(total=(len(sequence_cells) + len(lm_cells)) * len(config.seeds), disable=not config.progress,
              desc="bench rnn", unit="run") as bar:

        def run_seeds(name: str, configure: Callable[[int], RNNConfig], **options: Any) -> list[dict[str, Any]]:
            summaries = []
            for seed in config.seeds:
                summaries.append(_cell(_run_dir(out_dir, name, seed), configure(seed), **options))
                bar.update()
            return summaries

        for task, method, truncation in sequence_cells:
            summaries = run_seeds(f"{task}-{method}-T{truncation}", lambda seed: rnn_config(
                task, method=method, truncation=truncation, steps=config.steps, hidden_dim=config.hidden_dim,
                batch_size=config.batch_size, lr=config.lr, seed=seed, dry_run=config.dry_run, progress=False))
            paper = PAPER_LENGTHS[task].get(method)
            row = {"task": task, "method": method, "truncation": truncation,
                   **seed_medians(summaries, ("max_length_solved", "train_seconds")),
                   "paper": paper[TRUNCATIONS.index(truncation)] if paper and truncation in TRUNCATIONS else None}
            sequence.append(row)
            bar.set_postfix(cell=f"{task} {method} T={truncation}: {row['max_length_solved_median']:g}")
        for method, truncation in lm_cells:
            name = f"charlm-{method}-T{truncation}"
            summaries = run_seeds(name, lambda seed: rnn_config(
                "charlm", method=method, truncation=truncation, steps=config.lm_steps,
                hidden_dim=config.lm_hidden_dim, eval_every=config.lm_eval_every, window=config.lm_window,
                squash_cell=config.lm_squash_cell, dropout=config.lm_dropout, text=config.text, seed=seed,
                dry_run=config.dry_run, progress=False), corpus=corpus)
            curves = [[(record["step"], record["val/bpc"]) for record in read_metrics(_run_dir(out_dir, name, seed))
                       if "val/bpc" in record] for seed in config.seeds]
            row = {"method": method, "truncation": truncation, "steps": summaries[0]["steps"],
                   "chars_seen": summaries[0]["chars_seen"], "val_bpc_curves": curves,
                   **seed_medians(summaries, ("val_bpc", "best_val_bpc", "train_seconds"))}
            charlm.append(row)
            bar.set_postfix(cell=f"charlm {method} T={truncation}: {row['val_bpc_median']:.3f}")
    markdown = write_report(out_dir, "rnn", command, {"config": asdict(config), "sequence": sequence,
                                                      "charlm": charlm}, _sections(config, sequence, charlm))
    files = [out_dir / RESULTS_FILE, markdown]
    if charlm:
        from synthgrad.recurrent_plots import plot_bpc_curves  # matplotlib only when drawing

        curves = {f"{METHOD_NAMES[method]} T={truncation}": [_run_dir(out_dir, f"charlm-{method}-T{truncation}", seed)
                                                             for seed in config.seeds]
                  for method, truncation in lm_cells}
        files.append(plot_bpc_curves(curves, out_dir / "bpc_vs_chars.png"))
    return {"sequence": sequence, "charlm": charlm, "table": markdown.read_text(),
            "files": [str(path) for path in files]}


def _run_dir(out_dir: Path, name: str, seed: int) -> Path:
    return out_dir / "cells" / f"{name}-seed{seed}"


def _sections(config: RNNBenchConfig, sequence: list[dict], charlm: list[dict]) -> list[str]:
    budgets = ([f"{config.steps} batches per Copy / Repeat Copy cell"] if sequence else []) + (
        [f"{config.lm_steps} windows of {config.lm_window} characters on 32 streams per language model "
         f"(LSTM of {config.lm_hidden_dim})"] if charlm else [])
    budget = ", ".join((["a dry run"] if config.dry_run else budgets) + [seeds_phrase(config.seeds)])
    sections = [f"Budget: {budget}; 2-core CPU, one thread per run."]
    header = ["method", *(f"T={truncation}" for truncation in config.truncations), "seconds per run"]
    each_seed = " [each seed]" if len(config.seeds) > 1 else ""
    for task in config.tasks:
        rows = []
        for method in config.methods:
            cells = [row for row in sequence if row["task"] == task and row["method"] == method]
            seconds = statistics.median(row["train_seconds_median"] for row in cells)
            rows.append([METHOD_NAMES[method], *(_length_cell(row, each_seed) for row in cells), f"{seconds:.0f}"])
        sections.append(f"**{task}**: longest length solved, ours{each_seed} (paper)\n\n"
                        + markdown_table(header, rows))
    if charlm:
        # the issue compares methods at equal characters seen: the curves' values at each quarter of the run
        steps = charlm[0]["steps"]  # lm_steps, or a dry run's few
        quarters = [steps * quarter // 4 for quarter in (1, 2, 3)]
        rows = [[METHOD_NAMES[row["method"]], str(row["truncation"]),
                 *(_median_bpc_at(row["val_bpc_curves"], step) for step in quarters), f"{row['val_bpc_median']:.3f}",
                 f"{row['best_val_bpc_median']:.3f}", f"{row['train_seconds_median']:.0f}"] for row in charlm]
        chars_per_window = charlm[0]["chars_seen"] // steps
        header = ["method", "T", *(f"after {step * chars_per_window / 1e6:.1f} M" for step in quarters),
                  f"final ({charlm[0]['chars_seen'] / 1e6:.1f} M)", "best", "seconds per run"]
        which = " (medians of the seeds)" if len(config.seeds) > 1 else ""
        sections.append(f"**charlm**: validation bits per character after the characters seen{which}\n\n"
                        + markdown_table(header, rows))
    return sections


def _length_cell(row: dict[str, Any], each_seed: str) -> str:
    """``median [each seed] (paper)``: e.g. ``3 [2, 3, 4] (18)``."""
    text = f"{row['max_length_solved_median']:g}"
    if each_seed:
        text += f" [{', '.join(map(str, row['max_length_solved']))}]"
    return text + (f" ({row['paper']})" if row["paper"] else "")


def _median_bpc_at(curves: list[list[tuple[int, float]]], step: int) -> str:
    """The median over seeds of the validation BPC of the last evaluation at or before ``step`` ("–" if a
    seed has none yet)."""
    reached = [_bpc_at(curve, step) for curve in curves]
    return "–" if None in reached else f"{statistics.median(reached):.3f}"


def _bpc_at(curve: list[tuple[int, float]], step: int) -> Optional[float]:
    """The validation BPC of the last evaluation at or before ``step`` (``None`` if none)."""
    reached = [bpc for at, bpc in curve if at <= step]
    return reached[-1] if reached else None

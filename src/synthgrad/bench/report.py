"""What the benchmarks share: their grid options checked, medians over seeds, and what every benchmark
writes: ``results.json`` and a markdown table headed by the command that made it."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

from synthgrad.engine.records import write_json
from synthgrad.errors import InvalidConfig

RESULTS_FILE = "results.json"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, name: str, command: str, results: dict[str, Any], sections: Sequence[str]) -> Path:
    """Write ``out_dir/results.json`` and ``out_dir/<name>.md`` (the command, then ``sections`` separated
    by blank lines); returns the markdown file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RESULTS_FILE, results)
    path = out_dir / f"{name}.md"
    path.write_text("\n".join([f"Made by `{command}`.", "", *[section.rstrip("\n") + "\n" for section in sections]]))
    return path


def check_choices(option: str, chosen: Sequence[str], allowed: Sequence[str]) -> None:
    """Raise a one-line ``InvalidConfig`` naming the field ``option`` unless ``chosen`` is a non-empty selection
    from ``allowed``."""
    unknown = [value for value in chosen if value not in allowed]
    if unknown or not chosen:
        raise InvalidConfig(f"{{0}} {' '.join(chosen) or '(none)'}: choose from {', '.join(allowed)}", option)


def seeds_phrase(seeds: Sequence[int]) -> str:
    """How a table names what its numbers are: ``median of seeds 0, 1, 2`` or ``seed 0``."""
    return f"median of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"


def seed_medians(summaries: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """For each of ``keys``: ``key`` -> its value in every summary (one per seed, in order) and
    ``key_median`` -> their median."""
    values = {key: [summary[key] for summary in summaries] for key in keys}
    return {**values, **{f"{key}_median": statistics.median(values[key]) for key in keys}}

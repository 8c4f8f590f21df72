"""What every benchmark writes: ``results.json`` and a markdown table headed by the command that made it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from synthgrad.metrics import write_json

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

"""``synthgrad bench readme``: copy the benchmark tables kept in the repository into the README.

``<results>/<name>.md`` replaces what stands between ``<!-- name -->`` and ``<!-- /name -->`` in the
README, so that filling it again after a benchmark never adds a second copy. Tables without markers in
the README, and markers without a table, are left alone and reported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from synthgrad.errors import SynthgradError

_MARKER = re.compile(r"<!-- ([\w.-]+) -->\n.*?<!-- /\1 -->", flags=re.DOTALL)
"""A filled section: ``<!-- name -->``, a newline, anything, then ``<!-- /name -->``."""


@dataclass
class ReadmeUpdate:
    """What ``update_readme`` did: the sections it filled, tables no section names, sections no table fills."""

    filled: list[str] = field(default_factory=list)
    unused_tables: list[str] = field(default_factory=list)
    missing_tables: list[str] = field(default_factory=list)


def update_readme(readme: Path, results_dir: Path) -> ReadmeUpdate:
    """Fill every ``<!-- name -->`` section of ``readme`` that ``results_dir/<name>.md`` exists for, in place."""
    if not readme.is_file():
        raise SynthgradError(f"--readme {readme}: no such file; run from the repository root or name the README")
    if not results_dir.is_dir():
        raise SynthgradError(f"--results {results_dir}: no such directory of benchmark tables")
    tables = {path.stem: path.read_text() for path in sorted(results_dir.glob("*.md"))}
    update = ReadmeUpdate()

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in tables:
            update.missing_tables.append(name)
            return match.group(0)
        update.filled.append(name)
        return f"<!-- {name} -->\n{tables[name].rstrip()}\n<!-- /{name} -->"

    text = _MARKER.sub(fill, readme.read_text())
    update.unused_tables = [name for name in tables if name not in update.filled]
    readme.write_text(text)
    return update

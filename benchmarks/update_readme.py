"""Copy the tables in benchmarks/results/ into the README at their ``<!-- name -->`` markers.

    python benchmarks/update_readme.py

A marker is followed by the table it last received (up to the next blank line after it), so running
this again after a benchmark replaces the old table instead of adding a second one.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for table in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        marker = f"<!-- {table.stem} -->"
        pattern = re.compile(re.escape(marker) + r"\n(?:(?:Made by|\|).*\n|\n(?=\|))*")
        text = pattern.sub(lambda _: marker + "\n" + table.read_text(), text)
    readme.write_text(text)


if __name__ == "__main__":
    main()

"""Copy the tables in benchmarks/results/ into the README between their markers.

    python benchmarks/update_readme.py

``benchmarks/results/<name>.md`` goes between ``<!-- name -->`` and ``<!-- /name -->``, replacing what
was there, so running this again after a benchmark never adds a second copy.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for table in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        start, end = f"<!-- {table.stem} -->", f"<!-- /{table.stem} -->"
        pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), flags=re.DOTALL)
        text = pattern.sub(lambda _: start + "\n" + table.read_text() + end, text)
    readme.write_text(text)


if __name__ == "__main__":
    main()

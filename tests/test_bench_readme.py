"""``synthgrad bench readme``: tables go between their markers, idempotently; the repository's README
holds every table of benchmarks/results/ as it is."""
from pathlib import Path

from synthgrad.bench.readme import update_readme
from synthgrad.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_tables_replace_what_stands_between_their_markers(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "speed.md").write_text("Made by `x`.\n\n| a |\n|---|\n| 1 |\n")
    (results / "orphan.md").write_text("| b |\n")
    readme = tmp_path / "README.md"
    readme.write_text("# t\n<!-- speed -->\nold\ntable\n<!-- /speed -->\ntext\n<!-- gone -->\nkept\n<!-- /gone -->\n")
    assert main(["bench", "readme", "--readme", str(readme), "--results", str(results)], environ={}) == 0
    filled = readme.read_text()
    assert filled == ("# t\n<!-- speed -->\nMade by `x`.\n\n| a |\n|---|\n| 1 |\n<!-- /speed -->\ntext\n"
                      "<!-- gone -->\nkept\n<!-- /gone -->\n")
    captured = capsys.readouterr()
    assert captured.out == f"{readme}: filled speed\n"
    assert f"no table in {results} for: gone" in captured.err and f"not in {readme}: orphan" in captured.err
    assert main(["bench", "readme", "--readme", str(readme), "--results", str(results)], environ={}) == 0
    assert readme.read_text() == filled  # a second run adds nothing


def test_a_missing_readme_is_one_line(tmp_path, capsys):
    assert main(["bench", "readme", "--readme", str(tmp_path / "nope.md")], environ={}) == 2
    err = capsys.readouterr().err
    assert err == (f"synthgrad bench: error: --readme {tmp_path / 'nope.md'}: no such file; run from the repository "
                   "root or name the README\n")


def test_the_readme_holds_every_table_as_it_is(tmp_path):
    copy = tmp_path / "README.md"
    copy.write_text((ROOT / "README.md").read_text())
    update = update_readme(copy, ROOT / "benchmarks" / "results")
    assert update.missing_tables == [] and update.unused_tables == []
    assert copy.read_text() == (ROOT / "README.md").read_text(), "run: synthgrad bench readme"

"""``synthgrad bench overhead``: the dry run times every run in every round and writes the table headed by its
command, with the ratios that separate the engine's cost from the cuts'. Stand-in images, no MNIST needed."""
import json
import statistics

import pytest

from synthgrad.bench.overhead import RATIOS, RUNS
from synthgrad.cli import main


def test_dry_run_times_every_run_and_writes_the_ratios(tmp_path, capsys):
    out = tmp_path / "overhead"
    argv = ["bench", "overhead", "--dry-run", "--no-progress", "--rounds", "2", "--data-dir", str(tmp_path / "none"),
            "--out", str(out)]
    assert main(argv, environ={}) == 0
    table = (out / "overhead.md").read_text()
    assert table.startswith(f"Made by `synthgrad bench overhead --rounds 2 --out {out} --dry-run`.")
    assert capsys.readouterr().out.startswith("Made by `synthgrad bench overhead")
    results = json.loads((out / "results.json").read_text())
    seconds = results["seconds_per_epoch"]
    assert set(seconds) == set(RUNS) and all(len(values) == 2 and min(values) > 0 for values in seconds.values())
    for name, (over, under) in RATIOS.items():  # medians of each round's ratio, not ratios of medians
        assert results[name] == pytest.approx(statistics.median(a / b for a, b in zip(seconds[over], seconds[under])))
        assert f"| {over} |" in table
    operators = results["operators_per_step"]
    assert operators["plain-cdni"]["operators"] > operators["plain"]["operators"] > 0  # the cuts add operators

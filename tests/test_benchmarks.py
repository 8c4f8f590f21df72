"""Every benchmark script runs end to end with --dry-run (its real runs are too long for CI)."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script, table", [("gist.py", "gist.md"), ("mnist_methods.py", "mnist_methods.md")])
def test_benchmark_dry_run_writes_its_table(script, table, tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--dry-run", "--seeds", "0",
         "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "results" / table).read_text()
    assert text.startswith("Made by `python ")
    for method in ("backprop", "dni", "cdni"):
        assert f"| {method} |" in text


def test_pipeline_cpu_dry_run_prints_each_ranks_time_per_sample(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "pipeline_cpu.py"), "--dry-run", "--data-dir", str(tmp_path / "no-data"),
         "--runs", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("unlocked: rank 0: cpu ") and "| rank 1: cpu " in result.stdout

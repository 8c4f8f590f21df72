"""``benchmarks/pipeline_cpu.py`` runs end to end with --dry-run (its real runs are too long for CI)."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline_cpu.py"


def test_pipeline_cpu_dry_run_prints_each_ranks_time_per_sample(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--data-dir", str(tmp_path / "no-data"),
         "--runs", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("unlocked: rank 0: cpu ") and "| rank 1: cpu " in result.stdout

"""``synthgrad bench pipeline --dry-run``: every schedule runs, results.json and the table are written."""
import json

from synthgrad.bench.pipeline import PipelineBenchConfig, run_pipeline
from synthgrad.cli import main


def test_dry_run_writes_results_and_a_table_and_skips_finished_runs(tmp_path):
    config = PipelineBenchConfig(data_dir=str(tmp_path / "no-data"), layers=3, width=32, timeout_s=30, dry_run=True)
    out = tmp_path / "out"
    run_pipeline(config, out, command="synthgrad bench pipeline --dry-run", progress=False)
    results = json.loads((out / "results.json").read_text())
    assert set(results["schedules"]) == {"backprop", "unlocked", "gpipe", "1f1b", "cdni"}
    for name, row in results["schedules"].items():
        assert {"samples_per_s", "test_acc", "seconds_to_97"} <= row.keys()
        assert row["samples_per_s"] > 0 and 0 <= row["final_test_acc"] <= 1, name
    assert results["schedules"]["unlocked"]["processes"] == 2
    table = (out / "pipeline.md").read_text().splitlines()
    assert table[0] == "Made by `synthgrad bench pipeline --dry-run`."
    rows = [line.split(" | ")[0] for line in table if line.startswith("| ")]
    assert rows == ["| schedule", "| backprop, 1 process", "| cDNI update-unlocked", "| GPipe (torch.distributed.pipelining)",
                    "| 1F1B (torch.distributed.pipelining)", "| cDNI, 1 process, same cut"]

    def written():
        return {path.parent.name: path.stat().st_mtime_ns for path in out.glob("*/summary.json")}

    before = written()
    run_pipeline(config, out, command="synthgrad bench pipeline --dry-run", progress=False)
    assert written() == before
    config.max_staleness = 2  # only the unlocked cell depends on it: only it runs again
    run_pipeline(config, out, command="synthgrad bench pipeline --dry-run --max-staleness 2", progress=False)
    after = written()
    assert [name for name in before if after[name] != before[name]] == ["unlocked"]


def test_bench_pipeline_needs_two_stages(tmp_path, capsys):
    assert main(["bench", "pipeline", "--stages", "1", "--dry-run", "--out", str(tmp_path)], environ={}) == 2
    assert "--stages 1: the benchmark compares pipelines of at least 2 stages" in capsys.readouterr().err

"""``synthgrad bench pipeline --dry-run``: every schedule runs, results.json and the table are written."""
import json
import re

from synthgrad.bench.pipeline import PipelineBenchConfig, round_speedups, run_pipeline
from synthgrad.cli import main
from synthgrad.cli.bench import _PIPELINE_OPTIONS, _bench_rnn_command, _command_line, reproducing_command
from synthgrad.cli.main import build_parser


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
    unlocked, backprop = results["schedules"]["unlocked"], results["schedules"]["backprop"]
    assert unlocked["median_speedup"] == unlocked["samples_per_s"] / backprop["samples_per_s"]  # one round
    assert backprop["speedup_per_repeat"] == [1.0]
    for name in ("backprop", "unlocked", "gpipe", "1f1b"):  # each rank's processor time per sample
        row = results["schedules"][name]
        assert len(row["cpu_us_per_sample"]) == len(row["network_cpu_us_per_sample"]) == row["processes"], name
        assert all(value > 0 for value in row["cpu_us_per_sample"]), name
    assert results["schedules"]["cdni"]["cpu_us_per_sample"] is None  # one process outside the pipeline runtime
    # both cDNI runs (pipelined, one process) train the blocks below the cut at the decoupled rate; the others do not
    train_configs = {name: json.loads((out / name / "config.json").read_text()) for name in results["schedules"]}
    train_configs = {name: saved.get("classifier", saved)["train"] for name, saved in train_configs.items()}
    assert {name: train["decoupled_lr"] for name, train in train_configs.items()} == {
        "backprop": None, "unlocked": config.decoupled_lr, "gpipe": None, "1f1b": None, "cdni": config.decoupled_lr}
    assert (out / "pipeline.png").read_bytes().startswith(b"\x89PNG")
    table = (out / "pipeline.md").read_text().splitlines()
    assert table[0] == "Made by `synthgrad bench pipeline --dry-run`."
    rows = [line.split(" | ") for line in table if line.startswith("| ")]
    assert [row[0] for row in rows] == [
        "| schedule", "| backprop, 1 process", "| cDNI update-unlocked", "| GPipe (torch.distributed.pipelining)",
        "| 1F1B (torch.distributed.pipelining)", "| cDNI, 1 process, same cut"]
    assert rows[0][-1] == "CPU µs/sample per rank |" and rows[-1][-1] == "– |"
    assert re.fullmatch(r"\d+\.\d / \d+\.\d \|", rows[2][-1]), rows[2]

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


def test_speedups_are_taken_round_by_round_against_the_backprop_run_of_the_same_round():
    backprop = [{"samples_per_s": 20.0}, {"samples_per_s": 25.0}, {"samples_per_s": 20.0}]
    unlocked = [{"samples_per_s": 30.0}, {"samples_per_s": 35.0}, {"samples_per_s": 34.0}]
    # the fastest runs alone would say 35 / 25 = 1.4x; each round against its own backprop run says 1.5-1.7x
    assert round_speedups(unlocked, backprop) == [1.5, 1.4, 1.7]


def test_the_recorded_command_is_rebuilt_from_the_parsed_options_like_the_other_benchmarks():
    def _bench_pipeline_command(args):
        return _command_line("pipeline", args, _PIPELINE_OPTIONS)

    args = build_parser().parse_args(["bench", "pipeline", "--no-progress", "--repeats", "3", "--out", "/tmp/b"])
    assert _bench_pipeline_command(args) == (
        "synthgrad bench pipeline --epochs 3 --layers 12 --width 512 --batch-size 256 --stages 2 --micro-batches 4 "
        "--max-staleness 1 --decoupled-lr 0.0005 --seed 0 --repeats 3 --out /tmp/b")  # whatever sys.argv holds
    args = build_parser().parse_args(["bench", "pipeline", "--dry-run", "--data-dir", "d", "--max-staleness", "0"])
    assert _bench_pipeline_command(args).endswith("--max-staleness 0 --decoupled-lr 0.0005 --seed 0 --repeats 1 "
                                                  "--data-dir d --out runs/bench-pipeline --dry-run")
    args = build_parser().parse_args(["bench", "rnn", "--skip-lm", "--tasks", "--truncations", "4"])
    assert _bench_rnn_command(args) == ("synthgrad bench rnn --tasks --truncations 4 --methods bptt dni dni-aux "
                                        "--steps 20000 --skip-lm --seeds 0 --out runs/bench-rnn")
    assert reproducing_command("x", [("--a", None), ("--b", False), ("--c", True), ("--d", (1, 2)), ("--e", 0)]) == (
        "synthgrad bench x --c --d 1 2 --e 0")

"""``synthgrad rnn`` and ``synthgrad bench rnn`` end to end (dry runs), and their messages on bad input."""
import json
from pathlib import Path

import pytest

from synthgrad.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """tmp_path as the working directory, so a forgotten --out cannot litter the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def text(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("To be, or not to be, that is the question. " * 400)
    return path


@pytest.mark.parametrize("task, method, figure", [("copy", "bptt", "curriculum.png"),
                                                  ("repeat-copy", "dni-aux", "curriculum.png"),
                                                  ("charlm", "dni", "bpc.png")])
def test_rnn_dry_runs_write_a_run_directory(task, method, figure, tmp_path, text, capsys):
    out = tmp_path / "run"
    argv = ["rnn", task, "--method", method, "-T", "4", "--dry-run", "--no-progress", "--out", str(out)]
    assert main(argv + (["--text", str(text)] if task == "charlm" else []), environ={}) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert ("val_bpc" in summary and "chars_seen" in summary) if task == "charlm" else "max_length_solved" in summary
    assert (out / figure).read_bytes().startswith(PNG_SIGNATURE)
    assert json.loads((out / "config.json").read_text())["truncation"] == 4
    assert "run directory" in capsys.readouterr().out
    (out / figure).unlink()
    assert main(["plot", str(out)], environ={}) == 0  # synthgrad plot redraws a recurrent run's figure
    assert (out / figure).read_bytes().startswith(PNG_SIGNATURE)


def test_charlm_on_a_bad_text_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"na\xefve caf\xe9 " * 10)
    assert main(["rnn", "charlm", "--text", str(bad), "--dry-run", "--out", str(tmp_path / "r")], environ={}) == 2
    error = capsys.readouterr().err.strip()
    assert "is not UTF-8 text" in error and "\n" not in error
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["rnn", "charlm", "--text", str(empty), "--dry-run", "--out", str(tmp_path / "e")], environ={}) == 2
    assert "is empty" in capsys.readouterr().err


def test_charlm_window_must_be_a_multiple_of_the_truncation(tmp_path, text, capsys):
    assert main(["rnn", "charlm", "--text", str(text), "-T", "3", "--dry-run"], environ={}) == 2
    assert "multiple of --truncation" in capsys.readouterr().err


def test_charlm_without_text_names_the_fix(capsys):
    assert main(["rnn", "charlm", "--dry-run"], environ={}) == 2
    assert "--text FILE" in capsys.readouterr().err


def test_bench_rnn_dry_run_writes_the_table_and_resumes(tmp_path, text, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "rnn", "--dry-run", "--no-progress", "--out", str(out), "--text", str(text)]
    assert main(argv, environ={}) == 0
    table = (out / "rnn.md").read_text()
    assert table.startswith("Made by `synthgrad bench rnn --tasks copy repeat-copy --truncations 2 3 4 5 --methods "
                            "bptt dni dni-aux --steps 20000 --hidden-dim 128 --batch-size 32 --lr 0.003 "
                            "--lm-runs bptt:8 dni:8 cdni:8 dni-aux:8 bptt:16 bptt:32 "
                            f"--lm-steps 8000 --lm-dropout 0.25 --text {text} --seeds 0 --out {out} --dry-run`")
    assert "| DNI | 0 (16) | 0 (14) | 0 (18) | 0 (18) |" in table  # ours beside the paper's Copy numbers
    assert "| BPTT | 0 (7) | 0 (5) | 0 (19) | 0 (23) |" in table  # Repeat Copy
    results = json.loads((out / "results.json").read_text())
    assert len(results["sequence"]) == 24 and len(results["charlm"]) == 6
    assert (out / "bpc_vs_chars.png").read_bytes().startswith(PNG_SIGNATURE)
    finished = {path: path.stat().st_mtime_ns for path in out.glob("cells/*/summary.json")}
    assert main(argv, environ={}) == 0  # every cell is found finished and skipped
    assert {path: path.stat().st_mtime_ns for path in out.glob("cells/*/summary.json")} == finished


def test_bench_rnn_subset_keeps_the_paper_numbers_of_its_columns(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "rnn", "--dry-run", "--no-progress", "--out", str(out), "--tasks", "copy",
                 "--truncations", "4", "--methods", "dni", "--skip-lm", "--hidden-dim", "16", "--batch-size", "8",
                 "--lr", "1e-3"], environ={}) == 0
    table = (out / "rnn.md").read_text()
    assert "| DNI | 0 (18) |" in table and "BPTT" not in table and "charlm" not in table
    cell = json.loads((out / "cells" / "copy-dni-T4-seed0" / "config.json").read_text())
    assert (cell["hidden_dim"], cell["batch_size"], cell["train"]["lr"]) == (16, 8, 1e-3)  # the sequence cells' own
    assert "--lr 0.001 --skip-lm" in table


def test_bench_rnn_runs_every_seed_and_reports_the_median(tmp_path, text):
    out = tmp_path / "bench"
    assert main(["bench", "rnn", "--dry-run", "--no-progress", "--out", str(out), "--tasks", "copy", "--truncations",
                 "4", "--methods", "dni", "--lm-runs", "bptt:4", "--text", str(text), "--hidden-dim", "16",
                 "--seeds", "3", "5", "4"], environ={}) == 0
    assert sorted(path.name for path in (out / "cells").iterdir()) == [
        "charlm-bptt-T4-seed3", "charlm-bptt-T4-seed4", "charlm-bptt-T4-seed5",
        "copy-dni-T4-seed3", "copy-dni-T4-seed4", "copy-dni-T4-seed5"]
    assert json.loads((out / "cells" / "copy-dni-T4-seed5" / "config.json").read_text())["seed"] == 5
    results = json.loads((out / "results.json").read_text())
    lm = results["charlm"][0]
    assert len(lm["val_bpc"]) == 3 and lm["val_bpc_median"] == sorted(lm["val_bpc"])[1]
    assert len(lm["val_bpc_curves"]) == 3
    assert results["sequence"][0]["max_length_solved"] == [0, 0, 0]
    table = (out / "rnn.md").read_text()
    assert "median of seeds 3, 5, 4" in table and "| DNI | 0 [0, 0, 0] (18) |" in table
    assert f"| {lm['val_bpc_median']:.3f} | {lm['best_val_bpc_median']:.3f} |" in table  # final and best


def test_bench_rnn_language_model_runs_are_chosen_as_method_and_truncation(tmp_path, text, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "rnn", "--dry-run", "--no-progress", "--out", str(out), "--tasks", "--text", str(text),
                 "--lm-runs", "dni:4", "bptt:16"], environ={}) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(row["method"], row["truncation"]) for row in results["charlm"]] == [("dni", 4), ("bptt", 16)]
    assert json.loads((out / "cells" / "charlm-dni-T4-seed0" / "config.json").read_text())["dropout"] == 0.25
    with pytest.raises(SystemExit):
        main(["bench", "rnn", "--lm-runs", "dni-8"], environ={})
    assert "expected METHOD:T" in capsys.readouterr().err


def test_charlm_squashes_the_cell_state_by_default_and_copy_does_not(tmp_path, text):
    for task, expected in (("charlm", True), ("copy", False)):
        out = tmp_path / task
        argv = ["rnn", task, "--dry-run", "--no-progress", "--out", str(out), "--target-decay", "0.5"]
        assert main(argv + (["--text", str(text)] if task == "charlm" else []), environ={}) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["squash_cell"] is expected and config["target_decay"] == 0.5


@pytest.mark.parametrize("option, value", [("--target-decay", "1.5"), ("--dropout", "1")])
def test_rates_outside_their_range_exit_2_naming_the_option(option, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["rnn", "copy", option, value, "--dry-run"], environ={})
    assert exit_.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_dropout_is_written_to_the_config(tmp_path, text):
    out = tmp_path / "run"
    argv = ["rnn", "charlm", "--text", str(text), "--dropout", "0.25", "--dry-run", "--no-progress", "--out", str(out)]
    assert main(argv, environ={}) == 0
    assert json.loads((out / "config.json").read_text())["dropout"] == 0.25


def test_rnn_device_is_written_to_the_config(tmp_path):
    out = tmp_path / "run"
    assert main(["rnn", "copy", "--dry-run", "--no-progress", "--device", "cpu", "--out", str(out)], environ={}) == 0
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available, so --device cuda is valid")
def test_rnn_device_cuda_without_cuda_exits_2(tmp_path, capsys):
    assert main(["rnn", "copy", "--dry-run", "--device", "cuda", "--out", str(tmp_path / "r")], environ={}) == 2
    assert "--device cpu" in capsys.readouterr().err


def test_rnn_resume_continues_the_run_in_out_and_refuses_what_it_cannot(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["rnn", "copy", "--steps", "6", "--log-every", "2", "--checkpoint-every", "2", "--hidden-dim", "8",
            "--batch-size", "2", "--no-progress", "--out", str(out)]
    assert main(argv, environ={}) == 0
    reference = json.loads((out / "summary.json").read_text())
    records = (out / "metrics.jsonl").read_text()
    checkpoints = sorted(path.name for path in out.glob("checkpoint-*.pt"))
    assert checkpoints == ["checkpoint-00000002.pt", "checkpoint-00000004.pt"]  # the newest two; the end: final.pt
    assert main(["rnn", "copy", "--resume", "--out", str(out)], environ={}) == 2
    assert "holds a finished run" in capsys.readouterr().err
    (out / "summary.json").unlink()  # as if killed before the end: continue from the newest checkpoint
    assert main(["rnn", "copy", "--resume", "--no-progress", "--on-divergence", "skip", "--out", str(out)],
                environ={}) == 0
    assert "resuming" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["train"]["on_divergence"] == "skip"
    resumed = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in resumed.items() if "seconds" not in k} == {k: v for k, v in reference.items()
                                                                        if "seconds" not in k}
    # the records after step 4 written again, the same (and how many steps were skipped: none)
    assert [{k: v for k, v in json.loads(line).items() if k not in ("train/skipped_steps", "train/synth_lr")}
            for line in (out / "metrics.jsonl").read_text().splitlines()] == [json.loads(line) for line in
                                                                                 records.splitlines()]
    assert main(["rnn", "charlm", "--resume", "--out", str(out)], environ={}) == 2
    assert "holds a 'copy' run" in capsys.readouterr().err
    assert main(["rnn", "copy", "--resume"], environ={}) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_rnn_resume_without_a_checkpoint_names_the_fix(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["rnn", "copy", "--steps", "2", "--hidden-dim", "8", "--batch-size", "2", "--no-progress", "--out", str(out)]
    assert main(argv, environ={}) == 0
    (out / "summary.json").unlink()
    assert main(["rnn", "copy", "--resume", "--out", str(out)], environ={}) == 2
    error = capsys.readouterr().err
    assert "no readable checkpoint" in error and "without --resume" in error
    assert main(["rnn", "copy", "--resume", "--out", str(tmp_path / "nothing")], environ={}) == 2
    assert "cannot read" in capsys.readouterr().err


def test_rnn_errors_name_the_flags(tmp_path, text, capsys):
    argv = ["rnn", "charlm", "--text", str(text), "--window", "8", "--batch-size", "4096", "--no-progress",
            "--out", str(tmp_path / "run")]
    assert main(argv, environ={}) == 2  # 4096 streams of 4 characters: not more than a window
    error = capsys.readouterr().err
    assert "not more than the --window 8; choose a smaller --window or --batch-size" in error
    missing = tmp_path / "missing.txt"
    assert main(["rnn", "charlm", "--text", str(missing), "--dry-run", "--out", str(tmp_path / "m")], environ={}) == 2
    assert f"--text {missing}: no such file" in capsys.readouterr().err
    assert main(["rnn", "copy", "--log-every", "20", "--checkpoint-every", "30", "--dry-run", "--no-progress",
                 "--out", str(tmp_path / "c")], environ={}) == 0  # a checkpoint at the first record after 30
    assert json.loads((tmp_path / "c" / "config.json").read_text())["train"]["checkpoint_every"] == 40


def test_rnn_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert main(["rnn", "copy", "--dry-run", "--no-progress", "--tensorboard", "--out", str(out)], environ={}) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_rnn_continues_any_recurrent_run_for_synthgrad_resume(tmp_path, text):
    from synthgrad.cli.rnn import is_rnn_run, resume_rnn

    out = tmp_path / "run"
    argv = ["rnn", "charlm", "--text", str(text), "--steps", "4", "--eval-every", "2", "--checkpoint-every", "2",
            "--window", "8", "--hidden-dim", "8", "--batch-size", "4", "--no-progress", "--out", str(out)]
    assert main(argv, environ={}) == 0
    reference = json.loads((out / "summary.json").read_text())
    assert is_rnn_run(out) and not is_rnn_run(tmp_path)
    (out / "summary.json").unlink()
    resume_rnn(out, progress=False, on_divergence="skip")  # what `synthgrad resume RUN_DIR` calls for an rnn run
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["val_bpc"] == reference["val_bpc"] and resumed["chars_seen"] == reference["chars_seen"] == 4 * 4 * 8


def test_a_diverging_rnn_run_exits_3_and_on_divergence_skip_skips_its_bad_steps(tmp_path, capsys):
    # a synthesizer at 1e37 after one Adam step, 1e37 again after the second: its synthetic gradient then
    # overflows the LSTM's gradients
    argv = ["rnn", "copy", "--synth-lr", "1e37", "--steps", "20", "--hidden-dim", "8", "--batch-size", "4", "-T", "1",
            "--log-every", "5", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "stop")], environ={}) == 3
    assert "training diverged at step 3:" in capsys.readouterr().err
    # skipping halves the synthesizer's rate, but its weights are already at 1e37: ten skips in a row, then stop
    assert main([*argv, "--on-divergence", "skip", "--out", str(tmp_path / "skip")], environ={}) == 3
    assert "training diverged at step 12:" in capsys.readouterr().err

"""Runs that survive: SIGKILL at random steps, resume, and end bit-identical to an uninterrupted run."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from synthgrad.checkpoints import list_checkpoints, load_latest_checkpoint, prune_checkpoints, save_atomically
from synthgrad.cli import main

STEPS = 300
TRAIN = ["train", "--method", "cdni", "--steps", str(STEPS), "--log-every", "10", "--checkpoint-every", "10",
         "--no-progress"]


def _start(args: list[str], environ: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, **environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "synthgrad.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> None:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _signal_after(process: subprocess.Popen, run_dir: Path, records: int, signum: int) -> None:
    """Send ``signum`` to ``process`` as soon as ``run_dir`` has ``records`` metrics records."""
    deadline = time.monotonic() + 120
    while len(_records(run_dir)) < records and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signum)
    process.communicate(timeout=60)


def test_killed_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, environ):
    """Killed twice (SIGKILL) and interrupted once (Ctrl-C, which writes a checkpoint mid-interval)."""
    reference_dir, victim_dir = tmp_path / "reference", tmp_path / "victim"
    _finish(_start([*TRAIN, "--out", str(reference_dir)], environ))

    rng = random.Random(0)
    process = _start([*TRAIN, "--out", str(victim_dir)], environ)
    kills = 0  # how many signals landed mid-run
    fractions = sorted(rng.uniform(0.1, 0.8) for _ in range(3))
    for fraction, signum in zip(fractions, (signal.SIGKILL, signal.SIGINT, signal.SIGKILL)):
        _signal_after(process, victim_dir, int(fraction * STEPS / 10), signum)
        if (victim_dir / "summary.json").exists():
            break  # it finished before the signal landed; the kills before it still count
        kills += 1
        for _, path in list_checkpoints(victim_dir):  # never a torn checkpoint
            assert torch.load(path, weights_only=True)["step"] > 0
        if load_latest_checkpoint(victim_dir) is None:  # killed before the first checkpoint
            process = _start([*TRAIN, "--out", str(victim_dir), "--force"], environ)
        else:
            process = _start(["resume", str(victim_dir), "--no-progress"], environ)
    if process.poll() is None:
        _finish(process)
    assert kills >= 1, "no kill landed before the run ended; the test proved nothing"

    reference = torch.load(reference_dir / "final.pt", weights_only=True)["model"]
    resumed = torch.load(victim_dir / "final.pt", weights_only=True)["model"]
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key
    assert _records(victim_dir) == _records(reference_dir)  # the metrics too, record for record


def test_ctrl_c_writes_a_checkpoint_and_says_how_to_resume(tmp_path, environ):
    process = _start([*TRAIN, "--checkpoint-every", "0", "--out", str(tmp_path)], environ)
    deadline = time.monotonic() + 120
    while not _records(tmp_path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert f"continue with: synthgrad resume {tmp_path}" in stderr and "Traceback" not in stderr
    (step, path), = list_checkpoints(tmp_path)
    assert 0 < step < STEPS and torch.load(path, weights_only=True)["step"] == step


def test_resume_errors_are_one_line(tmp_path, capsys):
    assert main(["resume", str(tmp_path)], environ={}) == 2
    assert "has no config.json" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"model": "mlp"}))
    assert main(["resume", str(run_dir)], environ={}) == 2
    assert "is not a synthgrad run configuration" in capsys.readouterr().err

    finished = tmp_path / "finished"
    assert main(["train", "--dry-run", "--no-progress", "--layers", "1", "--width", "16", "--checkpoint-every", "0",
                 "--data-dir", str(tmp_path / "no-mnist"), "--out", str(finished)], environ={}) == 0
    capsys.readouterr()
    assert main(["resume", str(finished)], environ={}) == 2
    assert "holds a finished run; there is nothing to resume" in capsys.readouterr().err

    (finished / "summary.json").unlink()  # as if it had been killed: no checkpoint was written
    (finished / "checkpoint-00000002.pt").write_bytes(b"torn by a broken disk")
    assert main(["resume", str(finished)], environ={}) == 2
    stderr = capsys.readouterr().err
    assert "has no readable checkpoint" in stderr and "--force" in stderr and stderr.count("\n") == 1


def test_checkpoints_keep_the_newest_and_skip_unreadable_ones(tmp_path):
    for step in (10, 20, 30, 40, 50):
        save_atomically(tmp_path / f"checkpoint-{step:08d}.pt", {"step": step, "model": {}})
    prune_checkpoints(tmp_path, keep=3)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [30, 40, 50]
    (tmp_path / "checkpoint-00000050.pt").write_bytes(b"torn")
    save_atomically(tmp_path / "checkpoint-00000040.pt", {"step": 40})  # loads, but is no checkpoint
    assert load_latest_checkpoint(tmp_path) == {"step": 30, "model": {}}
    assert not list(tmp_path.glob(".*.tmp"))


def _crash_after(run_dir: Path, step: int) -> None:
    """Make a finished run look killed right after its step-``step`` checkpoint (the files it would not
    have written yet removed; its metrics beyond that step are kept, as a crash leaves them)."""
    for name in ("summary.json", "final.pt", "samples.pt"):
        (run_dir / name).unlink()
    for later, path in list_checkpoints(run_dir):
        if later > step:
            path.unlink()


def _assert_same_final_weights(left: Path, right: Path) -> None:
    expected = torch.load(left / "final.pt", weights_only=True)["model"]
    actual = torch.load(right / "final.pt", weights_only=True)["model"]
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_gist_resume_flag_continues_bit_identically(tmp_path, environ, capsys):
    """``gist --resume``: the gist schedule (1000 steps of batch 10, a checkpoint every 100), resumed
    from step 700 of a copy of a finished run, ends with the same weights and metrics."""
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    assert main(["gist", "--out", str(reference)], environ) == 0
    shutil.copytree(reference, victim)
    _crash_after(victim, 700)
    capsys.readouterr()
    assert main(["gist", "--resume", "--out", str(victim)], environ) == 0
    assert f"resuming {victim} from step 700" in capsys.readouterr().err
    _assert_same_final_weights(reference, victim)
    assert _records(victim) == _records(reference)


def test_train_resume_flag_is_synthgrad_resume(tmp_path, capsys):
    """``train --resume --out DIR`` and ``resume DIR`` continue the same way (a dry run's 3 steps on
    stand-in images, a checkpoint after every step, resumed from step 1)."""
    reference = tmp_path / "reference"
    assert main(["train", "--dry-run", "--no-progress", "--layers", "1", "--width", "16", "--log-every", "1",
                 "--checkpoint-every", "1", "--data-dir", str(tmp_path / "no-mnist"), "--out", str(reference)],
                environ={}) == 0
    for argv in (["train", "--resume", "--no-progress", "--out"], ["resume", "--no-progress"]):
        victim = tmp_path / argv[0]
        shutil.copytree(reference, victim)
        _crash_after(victim, 1)
        capsys.readouterr()
        assert main([*argv, str(victim)], environ={}) == 0
        assert f"resuming {victim} from step 1" in capsys.readouterr().err
        _assert_same_final_weights(reference, victim)
        assert _records(victim) == _records(reference)


@pytest.mark.parametrize("argv", [["resume", "RUN"], ["train", "--resume", "--out", "RUN"]])
def test_a_resumed_run_can_switch_to_skipping_non_finite_steps(tmp_path, capsys, argv):
    """What a diverged run needs to go on past the step that stopped it; nothing else changes."""
    run_dir = tmp_path / "run"
    assert main(["train", "--dry-run", "--no-progress", "--layers", "1", "--width", "16", "--log-every", "1",
                 "--checkpoint-every", "1", "--data-dir", str(tmp_path / "no-mnist"), "--out", str(run_dir)],
                environ={}) == 0
    _crash_after(run_dir, 1)
    argv = [str(run_dir) if arg == "RUN" else arg for arg in argv]
    assert main([*argv, "--no-progress", "--on-divergence", "skip"], environ={}) == 0
    assert json.loads((run_dir / "config.json").read_text())["train"]["on_divergence"] == "skip"
    assert [record.get("train/skipped_steps") for record in _records(run_dir)] == [None, 0, 0]

"""``synthgrad train --stages K``: bad input is refused before any process starts, with one line; Ctrl-C
stops every rank at one step with a checkpoint of each stage."""
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from synthgrad.cli import main
from synthgrad.errors import SynthgradError
from synthgrad.pipeline.launch import FAILED_STATUS, _describe_exit, _wait, check_port, free_port
from synthgrad.pipeline.runtime import checkpoint_steps

DRY = ["train", "--dry-run", "--no-progress"]


@pytest.mark.parametrize("args, message", [
    (["--stages", "5"], "--stages 5: the model has 4 blocks, so it can be split into 1 to 4 stages"),
    (["--stages", "1"], "--stages 1: a pipeline needs at least 2 stages"),
    (["--stages", "2", "--method", "backprop", "--schedule", "unlocked"], "--schedule unlocked needs synthesizers"),
    (["--stages", "2", "--schedule", "gpipe"], "--schedule gpipe is exact backprop"),
    (["--stages", "2", "--method", "backprop", "--micro-batches", "3"],
     "--micro-batches 3 must divide --batch-size 128"),
    (["--stages", "2", "--micro-batches", "2"], "--micro-batches is for lockstep, gpipe and 1f1b"),
    (["--stages", "2", "--on-divergence", "skip"], "--on-divergence skip is for one process"),
])
def test_bad_pipeline_options_exit_2_with_one_line(args, message, tmp_path, capsys):
    assert main([*DRY, *args, "--out", str(tmp_path / "run")], environ={}) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_port_in_use_is_refused(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SynthgradError, match=f"^port {port}: cannot listen") as refused:
            check_port("127.0.0.1", port)
        assert refused.value.fields == ("port",)
        assert main([*DRY, "--stages", "2", "--port", str(port), "--out", str(tmp_path / "run")], environ={}) == 2
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    check_port("127.0.0.1", free_port())


def test_under_torchrun_the_number_of_processes_must_match_the_stages(tmp_path, capsys):
    environ = {"RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    assert main([*DRY, "--stages", "2", "--out", str(tmp_path / "run")], environ=environ) == 2
    assert "--stages 2 but the job has 3 processes" in capsys.readouterr().err
    assert main([*DRY, "--stages", "2"], environ=environ) == 2
    assert "under torchrun pass --out" in capsys.readouterr().err


def test_the_launcher_kills_a_rank_that_outlives_a_failure_by_the_grace_period():
    context = multiprocessing.get_context("spawn")
    hung = context.Process(target=time.sleep, args=(120,))
    failed = context.Process(target=os._exit, args=(FAILED_STATUS,))
    for process in (hung, failed):
        process.start()
    started = time.monotonic()
    _wait([hung, failed], grace_s=0.5)
    assert time.monotonic() - started < 30
    assert [_describe_exit(process.exitcode) for process in (hung, failed)] == [
        "was killed by SIGKILL", "exited with status 4 because another rank failed"]


def test_ctrl_c_stops_every_rank_at_one_step_with_checkpoints_and_says_how_to_resume(tmp_path, environ):
    run_dir = tmp_path / "run"
    # its own session, so that the SIGINT below reaches the launcher and its ranks as a terminal's would
    process = subprocess.Popen(
        [sys.executable, "-m", "synthgrad.cli", "train", "--stages", "2", "--layers", "3", "--width", "32",
         "--steps", "20000", "--log-every", "10", "--checkpoint-every", "0", "--no-progress", "--out", str(run_dir)],
        env={**os.environ, **environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert "stopping every stage at the next logging step" in stderr
    assert f"continue with: synthgrad resume {run_dir}" in stderr and "Traceback" not in stderr
    (step,), (same,) = (checkpoint_steps(run_dir, rank) for rank in range(2))
    assert step == same and 0 < step < 20000 and step % 10 == 0
    assert f"interrupted at step {step}; checkpoint written to {run_dir}/stage-*/" in stderr

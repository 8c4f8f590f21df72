"""Start the K ranks of a pipeline run on this machine and watch them.

``launch_local`` is what ``synthgrad train --stages K`` does: it checks the run, picks a free port (or
checks the one given), starts one process per stage and waits. When one rank fails, the others exit on
their own within their timeout (``synthgrad.pipeline.comm``); any still running ``timeout_s + 10`` s
later (a hung rank cannot exit by itself) are killed, so the launch never hangs. Across machines,
``torchrun`` takes this module's place (see the README).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from synthgrad.errors import SynthgradError
from synthgrad.metrics import SUMMARY_FILE
from synthgrad.pipeline.comm import PipelineFailure
from synthgrad.pipeline.config import PipelineRun, Rendezvous, check_pipeline_run
from synthgrad.pipeline.runtime import run_rank

BAD_INPUT_STATUS, FAILED_STATUS = 2, 4
"""Exit status of a rank stopped by a bad configuration, and of one stopped by another rank's failure."""
_GRACE_S = 10.0


def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port on ``addr`` that nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as sock:
        sock.bind((addr, 0))
        return sock.getsockname()[1]


def check_port(addr: str, port: int) -> None:
    """Raise ``SynthgradError`` if ``port`` on ``addr`` cannot be listened on."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError as error:
            raise SynthgradError(f"--port {port}: cannot listen on {addr}:{port} ({error.strerror}); choose another "
                                 "port or leave --port out to pick a free one") from None


def rank_main(run: PipelineRun, rendezvous: Rendezvous, run_dir: str, resume: bool,
              on_record: Optional[Callable[[dict[str, Any]], None]]) -> None:
    """The body of one rank's process: run it, print one line on failure, and exit with a status that
    says what happened (0 done, 2 bad configuration, 4 another rank failed, 130 interrupted)."""
    prefix = f"synthgrad: rank {rendezvous.rank}"
    status = 0
    try:
        run_rank(run, rendezvous, Path(run_dir), resume=resume, on_record=on_record if rendezvous.rank == 0 else None)
    except SynthgradError as error:
        print(f"{prefix}: error: {error}", file=sys.stderr)
        status = BAD_INPUT_STATUS
    except PipelineFailure as error:
        print(f"{prefix}: error: {error}", file=sys.stderr)
        status = FAILED_STATUS
    except KeyboardInterrupt:
        status = 130
    except BaseException:  # noqa: BLE001 - anything else: show it, and still exit without hanging
        traceback.print_exc()
        status = 1
    if status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)  # no interpreter teardown: a process group with a dead peer can block it


def launch_local(run: PipelineRun, run_dir: Path, *, port: Optional[int] = None, addr: str = "127.0.0.1",
                 resume: bool = False, on_record: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Train ``run`` as ``run.pipeline.num_stages`` local processes; returns rank 0's summary.

    Raises ``SynthgradError`` for a bad configuration (before any process starts when it can tell) and
    ``PipelineFailure`` naming each rank that did not finish and how it ended.
    """
    check_pipeline_run(run, min_stages=1)
    if port is None:
        port = free_port(addr)
    else:
        check_port(addr, port)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=rank_main, name=f"synthgrad-rank-{rank}",
                                 args=(run, Rendezvous(addr, port, rank, run.pipeline.num_stages), str(run_dir),
                                       resume, on_record))
                 for rank in range(run.pipeline.num_stages)]
    # a launcher stopped by SIGTERM (or Ctrl-C) takes its ranks with it instead of leaving them orphaned
    previous = (signal.signal(signal.SIGTERM, _exit_on_sigterm)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        for process in processes:
            process.start()
        _wait(processes, run.pipeline.timeout_s + _GRACE_S)
    except BaseException:
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                process.kill()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    statuses = [process.exitcode for process in processes]
    if any(status == BAD_INPUT_STATUS for status in statuses):
        raise SynthgradError(f"rank {statuses.index(BAD_INPUT_STATUS)} stopped on a bad configuration (its message "
                             "is above)")
    if any(statuses):
        raise PipelineFailure("; ".join(f"rank {rank} {_describe_exit(status)}"
                                        for rank, status in enumerate(statuses) if status))
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _wait(processes: list, grace_s: float) -> None:
    """Wait for every process; once one has failed, give the rest ``grace_s`` seconds, then kill them."""
    failed_at: Optional[float] = None
    while any(process.exitcode is None for process in processes):
        if failed_at is None and any(process.exitcode not in (None, 0) for process in processes):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            for process in processes:
                if process.exitcode is None:
                    process.kill()
        for process in processes:
            process.join(timeout=0.05)


def _describe_exit(status: int) -> str:
    if status < 0:
        name = signal.Signals(-status).name if -status in signal.Signals._value2member_map_ else str(-status)
        return f"was killed by {name}"
    reason = {FAILED_STATUS: "because another rank failed", 130: "on Ctrl-C", 1: "on an unexpected error"}
    return f"exited with status {status}" + (f" {reason[status]}" if status in reason else "")

"""Start the K ranks of a pipeline run on this machine and watch them.

``launch_local`` starts one process per stage, each running a caller-given entry point (the function that
builds this rank's model and data and trains it, e.g. with ``synthgrad.pipeline.run_rank``), and waits.
When one rank fails, the others exit on their own within their timeout (``synthgrad.pipeline.comm``); any
still running ``timeout_s + 10`` s later (a hung rank cannot exit by itself) are killed, so the launch never
hangs. A stop requested here (Ctrl-C) reaches the ranks through a shared event, not a signal: they ignore
SIGINT, so that the one a terminal sends to every process cannot interrupt them mid-step; they stop
together at the next logging step, each with a checkpoint. Across machines, ``torchrun`` takes this
module's place, running the same entry point in each of its processes.
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

from synthgrad.engine.records import SUMMARY_FILE
from synthgrad.errors import PipelineFailure, SynthgradError, TrainingDiverged, TrainingInterrupted
from synthgrad.pipeline.config import Rendezvous
from synthgrad.pipeline.runtime import checkpoint_steps, interrupted, newest_common_step

RankEntry = Callable[[Rendezvous, Callable[[], bool]], Any]
"""``entry(rendezvous, stop_requested)``: what each rank's process runs (picklable: a module-level function,
or a ``functools.partial`` of one, since the processes are spawned)."""
BAD_INPUT_STATUS, DIVERGED_STATUS, FAILED_STATUS, STOPPED_STATUS = 2, 3, 4, 5
"""Exit status of a rank stopped by a bad configuration, by a non-finite loss, by another rank's failure,
and on request (with a checkpoint)."""
_GRACE_S = 10.0


def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port on ``addr`` that nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as sock:
        sock.bind((addr, 0))
        return sock.getsockname()[1]


def check_port(addr: str, port: int) -> None:
    """Raise ``SynthgradError`` naming ``port`` if it cannot be listened on at ``addr``."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError as error:
            raise SynthgradError(f"{{0}} {port}: cannot listen on {addr}:{port} ({error.strerror}); choose another "
                                 "port or leave {0} out to pick a free one", "port") from None


def rank_main(entry: RankEntry, rendezvous: Rendezvous, stop: Optional[Any] = None) -> None:
    """The body of one rank's process: run ``entry``, print one line on failure, and exit with a status that
    says what happened (0 done, 2 bad configuration, 3 diverged, 4 another rank failed, 5 stopped on
    request, 130 interrupted). ``stop``, a ``multiprocessing`` event, requests the stop; with it the
    rank ignores SIGINT."""
    prefix = f"synthgrad: rank {rendezvous.rank}"
    status = 0
    if stop is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        entry(rendezvous, (lambda: False) if stop is None else stop.is_set)
    except TrainingInterrupted:
        status = STOPPED_STATUS
    except TrainingDiverged as error:
        if rendezvous.rank == 0:  # every rank has the same message
            print(f"{prefix}: error: {error}", file=sys.stderr)
        status = DIVERGED_STATUS
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


def launch_local(entry: RankEntry, num_stages: int, run_dir: Path, *, timeout_s: float, port: Optional[int] = None,
                 addr: str = "127.0.0.1", stop_requested: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Run ``entry`` in ``num_stages`` local processes, one per rank, which write their run into ``run_dir``;
    returns rank 0's summary (``run_dir/summary.json``). ``timeout_s``: the ranks' own timeout, after which
    a rank still running once another has failed is killed (with a grace period).

    Raises ``SynthgradError`` when a rank stopped on a bad configuration (its message is printed),
    ``PipelineFailure`` naming each rank that did not finish and how it ended, ``TrainingDiverged`` when
    a loss became non-finite, and ``TrainingInterrupted`` when ``stop_requested`` (asked every 50 ms)
    said yes: every rank then stopped at the same logging step with a checkpoint of its stage.
    """
    if port is None:
        port = free_port(addr)
    else:
        check_port(addr, port)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    processes = [context.Process(target=rank_main, name=f"synthgrad-rank-{rank}",
                                 args=(entry, Rendezvous(addr, port, rank, num_stages), stop))
                 for rank in range(num_stages)]
    # a launcher stopped by SIGTERM (or Ctrl-C) takes its ranks with it instead of leaving them orphaned
    previous = (signal.signal(signal.SIGTERM, _exit_on_sigterm)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        for process in processes:
            process.start()
        _wait(processes, timeout_s + _GRACE_S, on_tick=lambda: stop_requested() and stop.set())
    except BaseException:
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                process.kill()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    statuses = [process.exitcode for process in processes]
    if all(status == STOPPED_STATUS for status in statuses):
        # each rank wrote its checkpoint of the step they stopped at: the newest step they all have
        step = newest_common_step(checkpoint_steps(Path(run_dir), rank) for rank in range(len(processes)))
        if step is not None:
            raise interrupted(run_dir, step)
    if any(status == DIVERGED_STATUS for status in statuses):
        raise TrainingDiverged(f"training diverged (rank 0's message above names the steps and the last good "
                               f"checkpoint in {run_dir})")
    if any(status == BAD_INPUT_STATUS for status in statuses):
        raise SynthgradError(f"rank {statuses.index(BAD_INPUT_STATUS)} stopped on a bad configuration (its message "
                             "is above)")
    if any(statuses):
        raise PipelineFailure("; ".join(f"rank {rank} {_describe_exit(status)}"
                                        for rank, status in enumerate(statuses) if status))
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _wait(processes: list, grace_s: float, on_tick: Callable[[], Any] = lambda: None) -> None:
    """Wait for every process, calling ``on_tick`` every 50 ms; once one has failed, give the rest
    ``grace_s`` seconds, then kill them."""
    failed_at: Optional[float] = None
    while any(process.exitcode is None for process in processes):
        on_tick()
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
    reason = {FAILED_STATUS: "because another rank failed", STOPPED_STATUS: "on request, with a checkpoint",
              DIVERGED_STATUS: "on a non-finite loss", 130: "on Ctrl-C", 1: "on an unexpected error"}
    return f"exited with status {status}" + (f" {reason[status]}" if status in reason else "")

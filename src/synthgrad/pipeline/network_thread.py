"""gloo's network thread on a CPU rank: its scheduling priority and the processor time it uses.

gloo moves every message of a CPU rank on one thread (``gloo_tcp_loop``), which polls its sockets in a loop
while the rank's compute thread holds the connection's lock. Linux gives each thread its own priority and
processor clock (``/proc/self/task/<tid>``); elsewhere nothing here has an effect, and the time is unknown.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

GLOO_NETWORK_THREAD = "gloo_tcp_loop"
NETWORK_THREAD_NICE = 10
"""Scheduling priority (nice value, 0 to 19) of gloo's network thread. It polls its sockets in a loop while
this rank's compute thread holds the connection's lock (strace: ~80 wakeups per message); at the compute
thread's own priority that spin took the core from the thread it waits for, 10-20% of each rank's processor
time on a 2-core machine. At nice 10 it still runs at once when a message arrives, but gives the core back as
soon as it spins. Measured on the benchmark's unlocked run (shared machine; a run's summary reports these
figures as ``network_cpu_us_per_sample`` and ``cpu_us_per_sample``): gloo's thread 10-13 -> 1-4 and each rank
54-62 -> 37-47 microseconds of processor time per sample."""


def threads_named(thread_name: str) -> Optional[list[Path]]:
    """The ``/proc/self/task/<tid>`` directories of this process's threads called ``thread_name`` (Linux;
    None where threads cannot be listed)."""
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return None
    named = []
    for task in tasks:
        try:
            if (task / "comm").read_text().strip() == thread_name:
                named.append(task)
        except OSError:  # a thread that just ended
            continue
    return named


def lower_priority(thread_name: str, nice: int) -> None:
    """Give this process's threads called ``thread_name`` the scheduling priority ``nice`` (or keep a lower
    one they have); where threads cannot be listed, nothing happens."""
    try:
        for task in threads_named(thread_name) or []:
            os.setpriority(os.PRIO_PROCESS, int(task.name), max(nice, os.getpriority(os.PRIO_PROCESS, int(task.name))))
    except (OSError, AttributeError):  # a thread that just ended, or no setpriority
        pass


class ThreadClock:
    """Processor seconds (user and system) used so far by this process's threads called ``thread_name``,
    found once (a process group starts its network thread when it is created): 0 if there is none, None
    where threads cannot be listed. Reading it costs one small file read per thread, so a rank reads it
    around every step."""

    def __init__(self, thread_name: str) -> None:
        self._tasks = threads_named(thread_name)

    def __call__(self) -> Optional[float]:
        if self._tasks is None:
            return None
        ticks = 0
        for task in self._tasks:
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()  # after the name, which may hold spaces
            except OSError:  # a thread that ended
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (proc(5) fields 14 and 15)
        return ticks / os.sysconf("SC_CLK_TCK")

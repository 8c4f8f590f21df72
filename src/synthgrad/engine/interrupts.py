"""Ctrl-C as a request: the first one asks training to stop at the next point where it can write a
checkpoint, the second interrupts at once. Used by the engine for a run in this process and by the
pipeline's launcher, which hands the request on to its ranks."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def ctrl_c_requests_stop(when: str = "after this step") -> Iterator[Callable[[], bool]]:
    """While active, yields ``stop_requested()``: ``True`` once Ctrl-C was pressed. A first Ctrl-C prints
    that training stops ``when`` (with a checkpoint); a second raises ``KeyboardInterrupt``. Outside the main
    thread, where no signal handler can be installed, nothing is requested."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    requested = False

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True
        print(f"\nstopping {when} (Ctrl-C again to abort at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)

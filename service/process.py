"""What a serving process arranges at start-up, in one process or in each worker.

Once its app is built, what start-up made (modules, flows, the app's parts) is moved
out of the garbage collector's sight and its youngest generation scanned less often:
an execution makes thousands of short-lived objects, nearly all freed by their
reference counts, and each scan of them walked the whole loaded app too (bench: 15-25%
of the engine's CPU per execution, PERFORMANCE.md).

It drains on SIGTERM (Cloud Run gives 10 s before SIGKILL): new pushes are
answered 503, running executions get a few seconds to finish and are otherwise
answered 503, so Pub/Sub redelivers them; never a 2xx for unfinished work. A worker
whose supervisor dies without a word (SIGKILL) dies with it rather than serve on alone.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Allocations between scans of the youngest generation (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def on_stop_signals(drain: Callable[[], None]) -> Callable[[], None]:
    """Call `drain` as soon as SIGTERM or SIGINT arrives, then uvicorn's own handler.

    Called from the app's start-up, after uvicorn installed its handlers, so it
    works the same in one process and in each worker. Returns what undoes it. In a
    worker it also asks Linux to kill the process when its supervisor dies.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # an app served from a thread (tests): no signals here
    if multiprocessing.parent_process() is not None:  # a worker of uvicorn's supervisor
        _die_with_parent()
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def handle(sig: int, frame: FrameType | None) -> None:
        drain()
        handler = previous[sig]
        if callable(handler):
            handler(sig, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    for sig in previous:
        signal.signal(sig, handle)

    def undo() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is handle:
                signal.signal(sig, handler)

    return undo


def settle_after_start() -> None:
    """Freeze what start-up made and scan the youngest generation every GC_YOUNG_THRESHOLD
    allocations; in a serving process only (not an app served from a test's thread)."""
    if threading.current_thread() is not threading.main_thread():
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # gone before we asked
        os._exit(1)

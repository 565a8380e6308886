"""Waiting for what a test awaits: a condition polled often, failing with what it was."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(
    condition: Callable[[], Any],
    timeout_s: float = 10,
    what: str | Callable[[], str] = "not in time",
) -> None:
    """Return once `condition()` is true; AssertionError naming `what` (or what `what()`
    says then) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(what() if callable(what) else what)
        time.sleep(0.01)

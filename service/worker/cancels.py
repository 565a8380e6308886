"""Cancels asked while executions run here: found by one store query a second.

Each run here registers the future that cancels it (set at once if the cancel was
asked before the run began); while any is registered, one task asks the store every
CANCEL_POLL_S which running executions an operator cancelled, on any instance, and
sets their events: one query per instance, whatever the number in flight.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from service.backends.store import RunStore
from service.errors import OrchestratorError

log = structlog.get_logger(__name__)

CANCEL_POLL_S = 1.0


class CancelWatch:
    """The cancel events of the runs in this instance, and the task that sets them."""

    def __init__(self, store: RunStore, poll_s: float = CANCEL_POLL_S) -> None:
        self._store = store
        self._poll_s = poll_s
        self._running: dict[str, asyncio.Future[None]] = {}  # execution id -> its cancel
        self._task: asyncio.Task[None] | None = None

    @contextmanager
    def watching(self, execution_id: str, asked: bool) -> Iterator[asyncio.Future[None]]:
        """The future whose end cancels this run of `execution_id`, watched while it runs
        (a future, not an Event: waiting for it takes no task)."""
        cancel: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if asked:
            cancel.set_result(None)
        self._running[execution_id] = cancel
        if self._task is None or self._task.done():
            # In a context of its own: not the first run's (its log fields, its trace).
            self._task = asyncio.create_task(self._watch(), context=contextvars.Context())
        try:
            yield cancel
        finally:
            if self._running.get(execution_id) is cancel:
                del self._running[execution_id]

    async def _watch(self) -> None:
        while self._running:
            await asyncio.sleep(self._poll_s)
            try:
                asked = await self._store.cancel_requests()
            except OrchestratorError as exc:
                log.warning("cancellations not read this time", reason=str(exc))
                continue
            for execution_id in asked & self._running.keys():
                log.info("cancel asked; abandoning the execution", execution_id=execution_id)
                if not self._running[execution_id].done():
                    self._running[execution_id].set_result(None)

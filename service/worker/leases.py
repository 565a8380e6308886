"""The leases of the runs in this instance, renewed by one task.

Each run holds its lease (`holding`) while it runs; while any is held, one task renews
them every `lease_s / 3` (their writes share the store's requests), each renewal a
short task of its own so that a slow one delays no other. A lease lost to another
delivery cancels its run and says so (`Lease.lost`). Before, each run had a keeper
task of its own for all its life (memory per execution in flight, PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog

from service.backends.store import RunStore
from service.errors import StoreUnavailable
from service.execution import TERMINAL, ExecutionStatus

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Lease:
    """One run's lease: whose it is, the run it keeps, and whether it was lost."""

    execution_id: str
    owner: str
    run: asyncio.Task[Any]
    lost: bool = False
    renewing: asyncio.Task[None] | None = None


class Leases:
    """The leases held here, and the task that renews them."""

    def __init__(self, store: RunStore, lease_s: float) -> None:
        self._store = store
        self._lease_s = lease_s
        self._held: dict[str, Lease] = {}  # owner -> its lease
        self._task: asyncio.Task[None] | None = None

    @contextmanager
    def holding(self, execution_id: str, owner: str, run: asyncio.Task[Any]) -> Iterator[Lease]:
        """`owner`'s lease on `execution_id`, renewed while `run` runs."""
        lease = self._held[owner] = Lease(execution_id, owner, run)
        if self._task is None or self._task.done():
            # In a context of its own: not the first run's (its log fields, its trace).
            self._task = asyncio.create_task(self._keep(), context=contextvars.Context())
        try:
            yield lease
        finally:
            self._held.pop(owner, None)
            if lease.renewing is not None:
                lease.renewing.cancel()

    async def _keep(self) -> None:
        while self._held:
            await asyncio.sleep(self._lease_s / 3)
            for lease in list(self._held.values()):
                if not lease.run.done() and (lease.renewing is None or lease.renewing.done()):
                    lease.renewing = asyncio.create_task(self._renew(lease))

    async def _renew(self, lease: Lease) -> None:
        try:
            renewed = await self._store.renew(lease.execution_id, lease.owner, self._lease_s)
            # The run's last step, the delivered save (or the suspend), ends the lease
            # itself: a busy loop can come here between that save and the run's end.
            if not renewed and await self._ended(lease.execution_id):
                return
        except StoreUnavailable as exc:
            # Two more tries before the lease runs out; the run goes on meanwhile.
            log.warning(
                "lease not renewed this time", reason=str(exc), execution_id=lease.execution_id
            )
            return
        if not renewed and not lease.run.done():
            log.error("lease lost; stopping this run", execution_id=lease.execution_id)
            lease.lost = True
            lease.run.cancel()

    async def _ended(self, execution_id: str) -> bool:
        """Whether this run is over in the store: ended, or suspended while it waits."""
        stored = await self._store.get(execution_id)
        return stored is not None and (
            stored.status in TERMINAL or stored.status == ExecutionStatus.WAITING
        )

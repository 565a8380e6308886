"""Limits across every instance: `limit: {key, concurrency, rate}` on call steps.

Each instance enforces its own share of each limit (calls in flight, and a token
bucket of calls per second with a second's burst) and leases that share in the store
every REFRESH_S, asking with its demand of the last period (service/shares.py has the
rule, and why the shares never add up past the limit): no store write per call, a few
per instance and limit a minute. A call that finds no room waits, within the
execution's deadline, and asks for a renewal at once; past the deadline the attempt
fails. An instance that cannot renew stops calling once its lease has run out, counted
from when it asked (another may hold that share by then); one that stops gives its
share back, one that dies loses it when its lease ends (LEASE_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import structlog

from service.engine.flow_spec import LimitSpec
from service.errors import OrchestratorError
from service.metrics import Metrics
from service.shares import Ask, Share

log = structlog.get_logger(__name__)

REFRESH_S = 2.0
LEASE_S = 6.0


class NoCapacity(Exception):
    """The limit had no room for the call before the execution's deadline."""


class Quota:
    """This instance's share of one limit, and the calls in it."""

    def __init__(self, spec: LimitSpec, quotas: Quotas) -> None:
        self.spec = spec
        self.total = Share(float(spec.concurrency or 0), spec.per_second or 0.0)
        self.granted = Share()
        self.in_flight = 0
        self.waiting = 0
        self._quotas = quotas
        self._room = asyncio.Condition()
        self._tokens = 0.0
        self._filled_at = time.monotonic()
        # What the last period asked for: its peak of calls wanted at once, its starts.
        self.peak = 0
        self.started = 0
        self.waited = False
        self.renewed_at = 0.0

    @asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[None]:
        """Hold a call of this limit; NoCapacity if none is free before `deadline`."""
        loop = asyncio.get_running_loop()
        async with self._room:
            if not self._take():
                await self._wait(loop, deadline)
        try:
            yield
        finally:
            async with self._room:
                self.in_flight -= 1
                self._room.notify_all()

    async def _wait(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self.waiting += 1
        self.waited = True
        self.peak = max(self.peak, self.in_flight + self.waiting)
        labels = {"key": self.spec.key}
        self._quotas.metrics.limit_waiting.add(1, labels)
        self._quotas.renew_soon()
        began = loop.time()
        try:
            while not self._take():
                timeout = min(deadline - loop.time(), self._next_token_s())
                if deadline - loop.time() <= 0:
                    raise NoCapacity(f"limit {self.spec.key!r}: no room before the deadline")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), timeout)
        finally:
            self.waiting -= 1
            self._quotas.metrics.limit_waiting.add(-1, labels)
            self._quotas.metrics.limit_wait.record(loop.time() - began, labels)

    def _take(self) -> bool:
        if self.spec.concurrency is not None and self.in_flight >= self.granted.concurrency:
            return False
        if self.spec.per_second is not None:
            self._fill()
            if self._tokens < 1:
                return False
            self._tokens -= 1
        self.in_flight += 1
        self.started += 1
        self.peak = max(self.peak, self.in_flight + self.waiting)
        return True

    def _fill(self) -> None:
        moment = time.monotonic()
        burst = max(1.0, self.granted.rate)
        self._tokens = min(burst, self._tokens + (moment - self._filled_at) * self.granted.rate)
        self._filled_at = moment

    def _next_token_s(self) -> float:
        if self.spec.per_second is None or self.granted.rate <= 0:
            return REFRESH_S
        return max(0.001, (1 - self._tokens) / self.granted.rate)

    def demand(self, period_s: float) -> Share:
        """What the last period asked for: the most calls wanted at once; the calls per
        second it started (all of the rate while calls waited)."""
        concurrency = float(max(self.peak, self.in_flight + self.waiting))
        rate = 0.0
        if self.spec.per_second is not None and (self.started or self.waiting):
            wanted = self.started / period_s * 1.5
            rate = self.total.rate if self.waited else min(self.total.rate, max(1.0, wanted))
        return Share(concurrency if self.spec.concurrency else 0.0, rate)

    async def grant(self, share: Share) -> None:
        """Use `share` from now on (the period's demand starts again)."""
        async with self._room:
            self.granted = share
            self.peak, self.started, self.waited = self.in_flight + self.waiting, 0, False
            self._room.notify_all()


class ShareLeases(Protocol):
    """Where the instances lease their shares of a limit (the execution store does it)."""

    async def lease_share(self, key: str, instance: str, ask: Ask, lease_s: float) -> Share:
        """`instance`'s share of limit `key` for the next `lease_s` (service/shares.py)."""


class Quotas:
    """Every limit this instance calls under, renewed together by one task."""

    def __init__(
        self,
        store: ShareLeases,
        metrics: Metrics,
        *,
        refresh_s: float = REFRESH_S,
        lease_s: float = LEASE_S,
        instance: str | None = None,
    ) -> None:
        self._store = store
        self.metrics = metrics
        self._refresh_s = refresh_s
        self._lease_s = lease_s
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._quotas: dict[str, Quota] = {}
        self._soon = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def of(self, spec: LimitSpec) -> Quota:
        quota = self._quotas.get(spec.key)
        if quota is None:
            quota = self._quotas[spec.key] = Quota(spec, self)
        return quota

    def renew_soon(self) -> None:
        self._soon.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._renewing())

    async def close(self) -> None:
        """Stop renewing and give every share back."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for quota in self._quotas.values():
            if quota.granted != Share():
                try:  # no call starts after this: nothing is held
                    await self._lease(quota, Ask(quota.total, Share(), Share(), Share()))
                except OrchestratorError as exc:
                    log.warning("limit share not given back", key=quota.spec.key, reason=str(exc))

    async def _renewing(self) -> None:
        while True:
            self._soon.clear()
            began = time.monotonic()
            await asyncio.gather(*(self._renew(quota) for quota in list(self._quotas.values())))
            if not any(q.granted != Share() or q.waiting for q in self._quotas.values()):
                return  # nothing held, nobody waiting: started again by the next call
            left = self._refresh_s - (time.monotonic() - began)
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._soon.wait(), left)

    async def _renew(self, quota: Quota) -> None:
        asked_at = time.monotonic()
        period = max(self._refresh_s, asked_at - quota.renewed_at)
        demand = quota.demand(period)
        in_use = Share(float(quota.in_flight) if quota.spec.concurrency else 0.0, 0.0)
        held = quota.granted  # applied until the answer lands: the store keeps it meanwhile
        try:
            granted = await self._lease(quota, Ask(quota.total, demand, in_use, held))
        except OrchestratorError as exc:
            log.warning("limit share not renewed", key=quota.spec.key, reason=str(exc))
            if time.monotonic() - quota.renewed_at >= self._lease_s:
                await quota.grant(Share())  # the lease has run out: it may be another's now
            return
        quota.renewed_at = asked_at  # the store counts the lease from about then, not later
        if granted.concurrency < held.concurrency or granted.rate < held.rate:
            self._soon.set()  # the store still records `held`: the next lease gives it back
        if granted != quota.granted:
            log.info(
                "limit share",
                key=quota.spec.key,
                concurrency=granted.concurrency,
                rate=round(granted.rate, 3),
                demand=demand.concurrency,
            )
        await quota.grant(granted)

    async def _lease(self, quota: Quota, ask: Ask) -> Share:
        return await self._store.lease_share(quota.spec.key, self.instance, ask, self._lease_s)

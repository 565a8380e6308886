"""How many calls this instance lets in flight to one ML function host: adaptive (AIMD).

A function that answers 429 or 503 is overloaded: the limit halves (from the calls
in flight then, so a burst far under the bound still backs off at once), at most
once per round of calls (the calls that started before a decrease cannot cause
another), and no new call starts until its Retry-After has passed. Each success adds
1/limit, about one call more per round, and ten times less near the level that was
last refused, so that the function is probed gently where it broke. The limit stays
between 1 and the configured bound (ML_MAX_CONCURRENCY_PER_HOST); each whole-number
change is logged. This is
TCP's congestion avoidance, as Netflix's concurrency-limits and Envoy's adaptive
concurrency apply it to services: no instance needs to know the others.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

log = structlog.get_logger(__name__)

OVERLOADED = frozenset({429, 503})


class AdaptiveLimit:
    """The calls in flight to one host, under a limit that adapts to its answers."""

    def __init__(self, host: str, bound: int) -> None:
        self.host = host
        self._bound = bound
        self._limit = float(bound)
        self._in_flight = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._round = 0  # counts decreases: a call knows the round it started in
        self._refused_at = float("inf")  # the calls in flight when it last answered 429/503
        self._paused_until = 0.0

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        """Hold one of the limit's calls; yields the round the call starts in."""
        if self._in_flight < self.limit and not self._waiting:
            self._in_flight += 1
        else:
            await self._queue()
        try:
            pause = self._paused_until - asyncio.get_running_loop().time()
            if pause > 0:
                await asyncio.sleep(pause)
            yield self._round
        finally:
            self._in_flight -= 1
            self._hand_over()

    def succeeded(self) -> None:
        before = self.limit
        step = 1 / self._limit
        if self._limit + 1 >= self._refused_at:
            step /= 10  # near where it broke: probe gently
        self._limit = min(float(self._bound), self._limit + step)
        if self.limit != before:
            self._hand_over()
            if self.limit < self._bound:
                log.info("concurrency to a function raised", host=self.host, limit=self.limit)

    def overloaded(self, started_round: int, retry_after: float | None) -> None:
        """A call that started in `started_round` was answered 429 or 503."""
        if retry_after:
            until = asyncio.get_running_loop().time() + retry_after
            self._paused_until = max(self._paused_until, until)
        if started_round != self._round:
            return  # this round was answered already
        self._round += 1
        before = self.limit
        self._refused_at = min(self._limit, self._in_flight + 1)
        self._limit = max(1.0, self._refused_at / 2)
        log.warning(
            "concurrency to a function lowered: it answered overloaded",
            host=self.host,
            limit=self.limit,
            was=before,
            retry_after_s=retry_after,
        )

    async def _queue(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter  # the slot is handed over with the result: _in_flight counts it
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._in_flight -= 1  # handed over as it was cancelled: give it back
                self._hand_over()
            elif waiter in self._waiting:
                self._waiting.remove(waiter)
            raise

    def _hand_over(self) -> None:
        while self._waiting and self._in_flight < self.limit:
            waiter = self._waiting.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)

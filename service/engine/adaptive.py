"""How this instance backs off an ML function that answers overloaded (429 or 503).

Two reactions, each where it belongs:

- `AdaptiveLimit`, per host: how many calls may be in flight to it (AIMD, as TCP's
  congestion avoidance, and as Netflix's concurrency-limits and Envoy's adaptive
  concurrency apply it to services: no instance needs to know the others).
- `Pauses`, per function (URL): a Retry-After holds back new calls to the function that
  asked, and only to it.

The limit's rules, with R the level last refused and L the limit:

    refused    An overloaded answer is judged against what the host was handling: the
               calls in flight to it when it answered, itself included (c). With c >= 2,
               R = min(L, c) and L = R / 2, at most once per round (the calls that started
               before a decrease cannot cause another). A lone call refused (c = 1) lowers
               nothing: no limit sends less than one call, and a cold start's 503 must not
               serialize every later fan-out (the retry policy and its budget pace that
               call).
    succeeded  Each success adds 1/L, one call more per round; within one call of R, ten
               times less, so that the host is probed gently where it broke.
    forgotten  FORGET_S after the last decrease, R is forgotten: each success then adds a
               whole call (the limit doubles each round), up to the bound.

So recovery is bounded: from R/2 the limit is back at R - 1 within R/2 rounds and past
R + 1 within 20 more; FORGET_S after the last refusal it reaches the bound in at most
log2(bound) rounds (7 for the default 100). The limit stays between 1 and the bound
(ML_MAX_CONCURRENCY_PER_HOST); each whole-number change is logged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

log = structlog.get_logger(__name__)

OVERLOADED = frozenset({429, 503})
FORGET_S = 30.0  # after this without a decrease, the level refused is forgotten
MAX_PAUSED_FUNCTIONS = 1024  # past this, pauses that have ended are dropped


class AdaptiveLimit:
    """The calls in flight to one host, under a limit that adapts to its answers."""

    def __init__(self, host: str, bound: int, forget_s: float = FORGET_S) -> None:
        self.host = host
        self._bound = bound
        self._forget_s = forget_s
        self._limit = float(bound)
        self._in_flight = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._round = 0  # counts decreases: a call knows the round it started in
        self._refused_at = float("inf")  # R: what the host was handling when it last refused
        self._lowered_at = 0.0  # the loop's time of the last decrease

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
            yield self._round
        finally:
            self._in_flight -= 1
            self._hand_over()

    def succeeded(self) -> None:
        before = self.limit
        if self._refused_at != float("inf") and self._now() - self._lowered_at >= self._forget_s:
            self._refused_at = float("inf")
        if self._refused_at == float("inf"):
            step = 1.0  # nothing refused lately: the limit doubles each round
        else:
            step = 1 / self._limit
            if abs(self._limit - self._refused_at) < 1:
                step /= 10  # near where it broke: probe gently
        self._limit = min(float(self._bound), self._limit + step)
        if self.limit != before:
            self._hand_over()
            if self.limit < self._bound:
                log.info("concurrency to a function raised", host=self.host, limit=self.limit)

    def overloaded(self, started_round: int) -> None:
        """A call that started in `started_round` was answered 429 or 503 (and has left
        its slot)."""
        handling = self._in_flight + 1
        if started_round != self._round or handling < 2:
            return  # this round was answered already, or a lone call: see the docstring
        self._round += 1
        before = self.limit
        self._refused_at = min(self._limit, float(handling))
        self._limit = max(1.0, self._refused_at / 2)
        self._lowered_at = self._now()
        log.warning(
            "concurrency to a function lowered: it answered overloaded",
            host=self.host,
            limit=self.limit,
            was=before,
            in_flight=handling,
        )

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

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


class Pauses:
    """What functions asked for in a Retry-After: until when new calls to each wait.

    Keyed by the function's URL (without its query), so one function's pause holds back
    no other on its host. The header is capped where it is read (service/retry.py:
    MAX_RETRY_AFTER_S); a call that would wait past its deadline is not made (the caller
    fails its attempt, naming the pause).
    """

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def asked(self, url: str, seconds: float) -> None:
        now = asyncio.get_running_loop().time()
        key = _function(url)
        self._until[key] = max(self._until.get(key, 0.0), now + seconds)
        if len(self._until) > MAX_PAUSED_FUNCTIONS:  # poll URLs are many: keep what holds
            self._until = {k: until for k, until in self._until.items() if until > now}

    def remaining(self, url: str) -> float:
        """Seconds until calls to `url` may go out again (0: now)."""
        until = self._until.get(_function(url))
        if until is None:
            return 0.0
        return max(0.0, until - asyncio.get_running_loop().time())


def _function(url: str) -> str:
    return url.split("?", 1)[0]

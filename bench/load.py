"""Load generators on aiohttp (cheaper per request than httpx, so the server is measured)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Latencies:
    """Latencies in ms and the rate they were measured at."""

    values: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def errors(self) -> str:
        """The failures by kind, e.g. "503 x 3", or empty."""
        return ", ".join(f"{kind} x {count}" for kind, count in self.failures.items())

    @property
    def rate(self) -> float:
        return len(self.values) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.values:
            return float("nan")
        if len(self.values) == 1:
            return self.values[0]
        return statistics.quantiles(self.values, n=100, method="inclusive")[int(p) - 1]


# A request answers None when it succeeded, else what went wrong (e.g. the HTTP status).
Request = Callable[[aiohttp.ClientSession], Awaitable[str | None]]


async def _timed(request: Request, session: aiohttp.ClientSession, result: Latencies) -> None:
    started = time.perf_counter()
    failure = await request(session)
    if failure is None:
        result.values.append((time.perf_counter() - started) * 1000)
    else:
        result.failures[failure] += 1


async def closed_loop(request: Request, connections: int, seconds: float) -> Latencies:
    """`connections` workers sending back to back for `seconds`: the maximum rate."""
    result = Latencies()
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await _timed(request, session, result)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        result.seconds = time.perf_counter() - started
    return result


async def open_loop(request: Request, rate: float, seconds: float) -> Latencies:
    """Requests started at a fixed `rate`, whatever the answers: latency at that load."""
    result = Latencies()
    count = int(rate * seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            await _timed(request, session, result)

        begin = time.perf_counter()
        await asyncio.gather(*(one(begin + n / rate) for n in range(count)))
        result.seconds = time.perf_counter() - begin
    return result


async def in_flight(request: Request, concurrency: int, total: int) -> Latencies:
    """`total` requests, `concurrency` of them in flight at any time."""
    result = Latencies()
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=600)
    ) as session:

        async def one() -> None:
            async with limit:
                await _timed(request, session, result)

        begin = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        result.seconds = time.perf_counter() - begin
    return result

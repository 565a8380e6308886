"""Fan-out: one execution calling 10/100/1000 functions at once against a bare client loop."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp

from bench.cases.engine import pusher
from bench.load import in_flight
from bench.processes import Process
from bench.run import Bench
from service.dev.standins import FUNCTIONS


async def run(bench: Bench, functions: Process) -> None:
    service = bench.service(functions)
    try:
        await in_flight(pusher(service.url, {"items": list(range(10))}, "fanout"), 1, 2)
        for calls in bench.sizes.fan_out:
            # CPU time comes in 10 ms ticks: repeat until ~1,000 calls were made.
            repeats = max(3, 1000 // calls)
            walls = []
            cpu = service.cpu_seconds()
            for _ in range(repeats):
                result = await in_flight(
                    pusher(service.url, {"items": list(range(calls))}, "fanout"), 1, 1
                )
                walls.append(result.values[0])
            cpu = (service.cpu_seconds() - cpu) / (calls * repeats) * 1000
            bare_wall, bare_cpu = await bare_loop(functions.url, calls)
            wall = statistics.median(walls)
            bench.report.add(
                f"fan-out, {calls} calls at once",
                f"{wall:.0f} ms wall, {cpu:.2f} ms CPU/call",
                f"bare aiohttp loop {bare_wall:.0f} ms, {bare_cpu:.2f} ms CPU/call",
                f"wall {wall / bare_wall - 1:+.0%}, CPU {cpu / bare_cpu:.1f}x the bare loop's",
            )
    finally:
        service.stop()


async def bare_loop(functions_url: str, calls: int) -> tuple[float, float]:
    """The same calls from a bare aiohttp loop: wall ms and CPU ms per call."""
    body = {"user_id": "bench", "session_id": "bench", "vacancy_id": "v"}
    url = functions_url + FUNCTIONS["DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL"]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            async with session.post(url, json=body) as response:
                await response.read()

        await asyncio.gather(*(one() for _ in range(min(calls, 10))))  # warm up
        repeats = max(3, 1000 // calls)
        walls = []
        cpu = time.process_time()
        for _ in range(repeats):
            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(calls)))
            walls.append((time.perf_counter() - started) * 1000)
        cpu_per_call = (time.process_time() - cpu) / (calls * repeats) * 1000
    return statistics.median(walls), cpu_per_call

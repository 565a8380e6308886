"""Memory: RSS of the service with 1,000 executions in flight."""

from __future__ import annotations

import asyncio

from bench.cases.engine import pusher
from bench.load import in_flight
from bench.processes import Process
from bench.run import FULL, Bench


async def run(bench: Bench, functions: Process) -> None:
    slow = bench.functions(delay_ms=2000)
    service = bench.service(slow)
    try:
        idle = service.rss_mb()
        peak = idle
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, service.rss_mb())
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        count = bench.sizes.memory
        result = await in_flight(pusher(service.url, FULL), count, count)
        done.set()
        await sampler
        bench.report.add(
            f"memory, {count} executions in flight",
            f"RSS peak {peak:.0f} MB" + (f", failures: {result.errors}" if result.errors else ""),
            f"idle {idle:.0f} MB",
            f"{(peak - idle) * 1024 / count:.0f} KB per execution",
        )
    finally:
        service.stop()
        slow.stop()

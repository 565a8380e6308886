"""Memory: RSS of the service with 1,000 executions in flight (stand-ins at 2 s, so every
execution holds its push and its calls), against the hand-written endpoint's under the
same load: what one in-flight execution costs beyond what its connections cost anyway."""

from __future__ import annotations

import asyncio
import ctypes.util

from bench.cases.engine import pusher
from bench.load import Latencies, in_flight
from bench.processes import Process
from bench.run import FULL, Bench


async def run(bench: Bench, functions: Process) -> None:
    slow = bench.functions(delay_ms=2000)
    jemalloc = ctypes.util.find_library("jemalloc")
    with_jemalloc = None
    try:
        service = bench.service(slow)
        try:
            ours = await peak_rss(service, bench.sizes.memory)
        finally:
            service.stop()
        if jemalloc is not None and not bench.args.tiny:  # the same on jemalloc's allocator
            service = bench.service(slow, LD_PRELOAD=jemalloc)  # a soname: the loader finds it
            try:
                with_jemalloc = await peak_rss(service, bench.sizes.memory)
            finally:
                service.stop()
        handwritten = bench.handwritten(slow)
        try:
            ceiling = await peak_rss(handwritten, bench.sizes.memory)
        finally:
            handwritten.stop()
    finally:
        slow.stop()
    count = bench.sizes.memory
    (idle, peak, result), (ceiling_idle, ceiling_peak, _) = ours, ceiling
    per_execution = (peak - idle) * 1024 / count
    ceiling_per_execution = (ceiling_peak - ceiling_idle) * 1024 / count
    bench.report.add(
        f"memory, {count} executions in flight",
        f"RSS peak {peak:.0f} MB (idle {idle:.0f}), {per_execution:.0f} KB per execution"
        + (f", failures: {result.errors}" if result.errors else ""),
        f"hand-written endpoint {ceiling_per_execution:.0f} KB per execution",
        f"{per_execution / ceiling_per_execution:.2f}x (goal ≤ 1.3x)",
    )
    if with_jemalloc is not None:
        idle, peak, _ = with_jemalloc
        jemalloc_per_execution = (peak - idle) * 1024 / count
        bench.report.add(
            f"memory, {count} executions in flight, jemalloc (LD_PRELOAD)",
            f"RSS peak {peak:.0f} MB (idle {idle:.0f}), "
            f"{jemalloc_per_execution:.0f} KB per execution",
            f"glibc's malloc {per_execution:.0f} KB per execution",
            f"{jemalloc_per_execution / per_execution:.2f}x",
        )


async def peak_rss(process: Process, count: int) -> tuple[float, float, Latencies]:
    """RSS (MB) idle and at its peak while `count` executions are in flight at once."""
    await in_flight(pusher(process.url, FULL), 2, 2)  # warm up
    idle = peak = process.rss_mb()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.rss_mb())
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    result = await in_flight(pusher(process.url, FULL), count, count)
    done.set()
    await sampler
    return idle, peak, result

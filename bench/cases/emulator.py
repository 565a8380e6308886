"""Through the emulator: end-to-end executions/s against the emulator's own push rate."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import aiohttp
import httpx

from bench.processes import Process
from bench.run import PROJECT, SEED, TOPIC, Bench
from service.dev.emulator import EmulatorAdmin
from service.execution import TERMINAL

ENDED = {status.value for status in TERMINAL}  # not queued (the front door's record), nor running


async def run(bench: Bench, functions: Process) -> None:
    if bench.emulator is None:
        bench.report.add("through the emulator", "not measured: no Pub/Sub emulator", "", "")
        return
    admin = EmulatorAdmin(bench.emulator.host, PROJECT)
    admin.topic(TOPIC)  # the service's /ready needs it (the front door's case may not have run)
    bare = bench.bare()
    service = bench.service(functions, pubsub=True)
    count = bench.sizes.end_to_end
    try:
        admin.topic("ceiling")
        admin.push_subscription("ceiling-push", "ceiling", f"{bare.url}/pubsub/push")
        ceiling = await pushed_rate(admin, "ceiling", count, lambda: count_pushes(bare))
        admin.push_subscription("e2e-push", TOPIC, f"{service.url}/pubsub/push")
        admin.pull_subscription("e2e-seen", TOPIC)
        ours = await end_to_end_rate(service.url, count)
        bench.report.add(
            f"through the emulator, {count} executions",
            f"{ours:.1f} executions/s",
            f"emulator push rate to a 204 endpoint {ceiling:.1f}/s",
            f"{ours / ceiling:.0%}",
        )
    finally:
        service.stop()
        bare.stop()


def count_pushes(bare: Process) -> int:
    return int(httpx.get(bare.url + "/count", timeout=5).json()["pushes"])


async def pushed_rate(
    admin: EmulatorAdmin, topic: str, count: int, received: Callable[[], int]
) -> float:
    """Messages per second the emulator pushes to an endpoint that acks at once."""
    before = received()
    started = time.perf_counter()
    for n in range(count):
        admin.publish(topic, json.dumps({"n": n}).encode())
    while received() - before < count:  # noqa: ASYNC110 - polling another process
        await asyncio.sleep(0.02)
    return count / (time.perf_counter() - started)


async def end_to_end_rate(url: str, count: int) -> float:
    """Executions per second from the first POST /orchestrate to the last one's end."""
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        ids = []
        for _ in range(count):
            async with session.post(url + "/orchestrate", json=SEED) as response:
                ids.append((await response.json())["execution_id"])
        pending = set(ids)
        while pending:
            for execution_id in list(pending):
                async with session.get(f"{url}/executions/{execution_id}") as response:
                    if response.status == 200 and (await response.json())["status"] in ENDED:
                        pending.discard(execution_id)
            await asyncio.sleep(0.05)
        return count / (time.perf_counter() - started)

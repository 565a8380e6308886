"""The original: the seed's payload run one call at a time (the monolith) against ours."""

from __future__ import annotations

import statistics
import time
from typing import Any

import aiohttp

from bench.cases.engine import pusher
from bench.load import in_flight
from bench.processes import Process
from bench.run import SEED, Bench
from service.dev.standins import FUNCTIONS


async def run(bench: Bench, functions: Process) -> None:
    seed_ours = await seed_execution(bench, functions)
    sequential = await monolith(functions.url)
    bench.report.add(
        "vs the original (seed payload, 3 vacancies)",
        f"ours {seed_ours:.0f} ms",
        f"one call at a time {sequential:.0f} ms",
        f"{sequential / seed_ours:.2f}x faster",
    )
    bench.report.data["original"] = {"ours_ms": seed_ours, "sequential_ms": sequential}


async def seed_execution(bench: Bench, functions: Process) -> float:
    service = bench.service(functions)
    try:
        await in_flight(pusher(service.url, SEED), 1, 3)
        return (await in_flight(pusher(service.url, SEED), 1, 10)).percentile(50)
    finally:
        service.stop()


async def monolith(functions_url: str) -> float:
    """The original Cloud Function: the seed payload's calls, one after another (median ms)."""
    base = {"user_id": SEED["user_id"], "session_id": SEED["session_id"]}

    def url(name: str) -> str:
        return functions_url + FUNCTIONS[name]

    async with aiohttp.ClientSession() as session:

        async def call(name: str, body: dict[str, Any]) -> Any:
            async with session.post(url(name), json=body) as response:
                return await response.json()

        async def once() -> float:
            started = time.perf_counter()
            await call("DEFAULT_PROFESSION_ORCHESTRATOR_URL", base)
            matches = await call("DEFAULT_MATCH_CANDIDATO_URL", base)
            for vacancy in matches["vacancies"]:
                body = {**base, "vacancy_id": vacancy["vacancy_id"]}
                await call("DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL", body)
            return (time.perf_counter() - started) * 1000

        await once()
        return statistics.median([await once() for _ in range(10)])

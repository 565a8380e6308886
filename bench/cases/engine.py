"""Engine: the default flow pushed straight to /pubsub/push at 1/100/1000 in flight:
execution time minus its critical path called by a bare client; then latency and CPU per
execution against a hand-written aiohttp push endpoint making the same calls
(bench/handwritten.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp

from bench.load import in_flight
from bench.processes import Process
from bench.run import FULL, Bench
from service.dev.standins import FUNCTIONS


async def run(bench: Bench, functions: Process) -> None:
    service = bench.service(functions)
    critical = await bare_chain(functions.url)
    curve: dict[str, list[float]] = {"in_flight": [], "p50": [], "p99": []}
    try:
        await in_flight(pusher(service.url, FULL), 1, 3)  # warm up
        for concurrency in bench.sizes.in_flight:
            total = max(20, concurrency * 2) if concurrency > 1 else 20
            result = await in_flight(pusher(service.url, FULL), concurrency, total)
            p50, p99 = result.percentile(50) - critical, result.percentile(99) - critical
            curve["in_flight"].append(concurrency)
            curve["p50"].append(p50)
            curve["p99"].append(p99)
            bench.report.add(
                f"engine overhead, {concurrency} in flight",
                f"p50 +{p50:.1f} ms, p99 +{p99:.1f} ms"
                + (f", failures: {result.errors}" if result.errors else ""),
                f"critical path {critical:.0f} ms (bare client)",
                f"p50 {p50 / critical:.1%} of it, {result.rate:,.0f} executions/s",
            )
        bench.report.data["engine"] = curve
        await against_handwritten(bench, functions, service)
    finally:
        service.stop()


async def against_handwritten(bench: Bench, functions: Process, service: Process) -> None:
    """One in flight: p50 latency; 20 in flight: CPU per execution, ours and the ceiling's."""
    ceiling = bench.handwritten(functions)
    try:
        latency, cpu = {}, {}
        for name, process in (("ours", service), ("handwritten", ceiling)):
            await in_flight(pusher(process.url, FULL), 1, 3)  # warm up
            latency[name] = (await in_flight(pusher(process.url, FULL), 1, 20)).percentile(50)
            used = process.cpu_seconds()
            runs = bench.sizes.cpu_runs
            await in_flight(pusher(process.url, FULL), 20, runs)
            cpu[name] = (process.cpu_seconds() - used) / runs * 1000
    finally:
        ceiling.stop()
    bench.report.add(
        "engine vs hand-written, 1 in flight",
        f"p50 {latency['ours']:.1f} ms",
        f"hand-written aiohttp endpoint {latency['handwritten']:.1f} ms",
        f"+{latency['ours'] - latency['handwritten']:.1f} ms (goal < +2 ms)",
    )
    bench.report.add(
        "engine CPU per execution (6 calls, 20 in flight)",
        f"{cpu['ours']:.2f} ms",
        f"hand-written aiohttp endpoint {cpu['handwritten']:.2f} ms",
        f"{cpu['ours'] / cpu['handwritten']:.2f}x (goal ≤ 1.5x)",
    )


def pusher(url: str, flow_input: dict[str, Any], flow: str = "ml-orchestration") -> Any:
    """Sends the push envelope of a new execution; true when acked (204)."""

    async def push(session: aiohttp.ClientSession) -> str | None:
        message = {
            "execution_id": str(uuid.uuid4()),
            "flow": flow,
            "input": flow_input,
            "webhook_url": None,
            "requested_at": datetime.now(UTC).isoformat(),
        }
        data = base64.b64encode(json.dumps(message).encode()).decode()
        envelope = {"message": {"data": data, "messageId": message["execution_id"]}}
        async with session.post(url + "/pubsub/push", json=envelope) as response:
            text = (await response.read()).decode(errors="replace")[:80]
            return None if response.status == 204 else f"{response.status} {text}".strip()

    return push


async def bare_chain(functions_url: str) -> float:
    """The default flow's critical path called by a bare client: embeddings, matching, then
    the analyses at once (median ms). The ceiling the engine's overhead is measured from."""
    base = {"user_id": "u", "session_id": "s"}
    async with aiohttp.ClientSession() as session:

        async def call(name: str, body: dict[str, Any]) -> Any:
            async with session.post(functions_url + FUNCTIONS[name], json=body) as response:
                return await response.json()

        async def once() -> float:
            started = time.perf_counter()
            await call("DEFAULT_CREATE_USER_EMBEDDINGS_URL", base)
            matches = await call("DEFAULT_MATCH_CANDIDATO_URL", base)
            analysis = "DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL"
            await asyncio.gather(
                *(
                    call(analysis, {**base, "vacancy_id": v["vacancy_id"]})
                    for v in matches["vacancies"]
                )
            )
            return (time.perf_counter() - started) * 1000

        await once()
        return statistics.median([await once() for _ in range(10)])

"""Front door: POST /orchestrate (publish awaited, emulator) against a bare FastAPI 202."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.load import closed_loop, open_loop
from bench.processes import Process
from bench.run import PROJECT, SEED, TOPIC, Bench
from service.dev.emulator import EmulatorAdmin


def poster(url: str) -> Callable[[aiohttp.ClientSession], Any]:
    """Posts the seed payload to the front door; None when accepted (202)."""
    body = json.dumps(SEED).encode()
    headers = {"content-type": "application/json"}

    async def post(session: aiohttp.ClientSession) -> str | None:
        async with session.post(url + "/orchestrate", data=body, headers=headers) as r:
            await r.read()
            return None if r.status == 202 else str(r.status)

    return post


async def run(bench: Bench, functions: Process) -> None:
    if bench.emulator is None:
        bench.report.add("front door", "not measured: no Pub/Sub emulator", "", "")
        return
    EmulatorAdmin(bench.emulator.host, PROJECT).topic(TOPIC)
    service, bare = bench.service(functions, pubsub=True), bench.bare()
    try:
        for process in (service, bare):  # warm up
            await closed_loop(poster(process.url), 10, 0.5)
        cpu = service.cpu_seconds()
        ours = await closed_loop(poster(service.url), 50, bench.sizes.seconds)
        ours_cpu = (service.cpu_seconds() - cpu) / max(1, len(ours.values)) * 1000
        cpu = bare.cpu_seconds()
        ceiling = await closed_loop(poster(bare.url), 50, bench.sizes.seconds)
        bare_cpu = (bare.cpu_seconds() - cpu) / max(1, len(ceiling.values)) * 1000
        bench.report.add(
            "front door, max rate (50 connections)",
            f"{ours.rate:,.0f} req/s, {ours_cpu:.2f} ms CPU/request",
            f"bare FastAPI {ceiling.rate:,.0f} req/s, {bare_cpu:.2f} ms CPU/request",
            f"{ours.rate / ceiling.rate:.0%} (goal ≥ 60%)",
        )
        curve: dict[str, list[float]] = {"rate": [], "p50": [], "p99": [], "bare_p99": []}
        for rate in bench.sizes.rates:
            at = await open_loop(poster(service.url), rate, bench.sizes.seconds)
            bare_at = await open_loop(poster(bare.url), rate, bench.sizes.seconds)
            curve["rate"].append(rate)
            curve["p50"].append(at.percentile(50))
            curve["p99"].append(at.percentile(99))
            curve["bare_p99"].append(bare_at.percentile(99))
            bench.report.add(
                f"front door at {rate} req/s",
                f"p50 {at.percentile(50):.1f} ms, p99 {at.percentile(99):.1f} ms"
                + (f", failures: {at.errors}" if at.errors else ""),
                f"bare p99 {bare_at.percentile(99):.1f} ms",
                f"achieved {at.rate:,.0f} req/s",
            )
        bench.report.data["front_door"] = curve
    finally:
        service.stop()
        bare.stop()

"""Time from 202 to webhook for the default flow, against its critical path.

Demo ML functions answer after DELAY_MS each; the default flow's critical path is
embeddings → match_candidato → one analysis round = 3 x DELAY_MS. Executions are
sent one at a time, through the in-process transport and through the Pub/Sub
emulator (when installed), and the webhook's arrival is timed.

    .venv/bin/python -m bench.latency [--runs 20] [--delay-ms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response

from service.app import create_app
from service.dev.emulator import Emulator, EmulatorAdmin, find_emulator, free_port
from service.dev.standins import FUNCTIONS, StandIns
from service.engine.flow import load_flows
from service.messages import SEED_PAYLOAD
from service.settings import PROJECT_FLOWS_DIR, Settings

SEED = {**SEED_PAYLOAD, "create_user_embedding": True}


@contextlib.asynccontextmanager
async def served(app: FastAPI, port: int) -> AsyncIterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn has no event for it
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def measure(runs: int, delay_ms: float, emulator: Emulator | None) -> list[float]:
    arrivals: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    receiver = FastAPI()

    @receiver.post("/hook")
    async def hook(request: Request) -> Response:
        arrivals.put_nowait((request.headers["webhook-id"], time.perf_counter()))
        return Response(status_code=204)

    demo_port, hook_port, port = free_port(), free_port(), free_port()
    demo = f"http://127.0.0.1:{demo_port}"
    env = {name: demo + path for name, path in FUNCTIONS.items()}
    project = f"bench-{port}"
    settings = Settings(
        _env_file=None,
        google_cloud_project=project if emulator else None,
        pubsub_emulator_host=emulator.host if emulator else None,
        ml_auth="none",
        log_format="json",
        default_webhook_url=f"http://127.0.0.1:{hook_port}/hook",
        webhook_allow_private_networks=True,
        webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    if emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        admin = EmulatorAdmin(emulator.host, project)
        admin.topic(settings.orchestration_topic)
        admin.push_subscription(
            "push", settings.orchestration_topic, f"http://127.0.0.1:{port}/pubsub/push"
        )
    app = create_app(settings, load_flows(PROJECT_FLOWS_DIR, env))
    latencies = []
    async with (
        served(StandIns(delay_s=delay_ms / 1000).app(), demo_port),
        served(receiver, hook_port),
        served(app, port) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for _ in range(runs + 1):  # the first run warms connections and tokens up
            started = time.perf_counter()
            accepted = (await client.post("/orchestrate", json=SEED)).json()
            execution_id, arrived = await arrivals.get()
            assert execution_id == accepted["execution_id"]
            latencies.append((arrived - started) * 1000)
    return latencies[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=100)
    args = parser.parse_args()
    critical = 3 * args.delay_ms
    binary = find_emulator()
    emulator = Emulator.start(binary) if binary else None
    try:
        rows = [("in-process", asyncio.run(measure(args.runs, args.delay_ms, None)))]
        if emulator:
            rows.append(("emulator", asyncio.run(measure(args.runs, args.delay_ms, emulator))))
    finally:
        if emulator:
            emulator.stop()
    print(f"202 → webhook, default flow, functions at {args.delay_ms:g} ms, {args.runs} runs")
    print(f"critical path: {critical:.0f} ms")
    print(f"{'transport':<12} {'p50 ms':>8} {'p99 ms':>8} {'p50 / critical path':>20}")
    for name, latencies in rows:
        p50 = statistics.median(latencies)
        p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else p50
        print(f"{name:<12} {p50:>8.1f} {p99:>8.1f} {p50 / critical:>20.3f}")
    if not emulator:
        print("(Pub/Sub emulator not installed: emulator row not measured)")


if __name__ == "__main__":
    main()

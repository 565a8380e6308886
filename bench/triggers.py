"""`python -m bench.triggers`: what accepting an event costs, against accepting the same
execution at the front door, measured in the same run.

One app (the memory store; a broker that only keeps what it is given, so nothing runs
and only the acceptance is timed) takes --runs requests, --at-once at a time, through
httpx's ASGI transport:

- `POST /orchestrate` with the default flow's test payload;
- `POST /pubsub/events/ml-orchestration/upload`: a Cloud Storage notification, its trigger
  (`when` over its attributes, `input` from its object's metadata) making the same input.

CPU of this process per accepted request (the client's share included, the same for
both), medians over --rounds rounds alternated; the ratio against the front door.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import yaml

from bench.handler import FULL
from bench.processes import ROOT
from bench.waits import Published
from service.app import create_app
from service.backends.memory import MemoryStore
from service.dev.standins import FUNCTIONS
from service.engine.flow import load_flows
from service.logs import configure_logging
from service.settings import Settings

TRIGGER = {
    "name": "upload",
    "topic": "user-uploads",
    "when": '${event.attributes.eventType == "OBJECT_FINALIZE"'
    ' && event.attributes.objectId.endsWith(".json")}',
    "input": {
        "user_id": "${event.data.metadata.user_id}",
        "session_id": "${event.data.metadata.session_id}",
        "create_user_embedding": True,
        "process_profession_orchestrator": True,
        "process_vacancy_orchestrator": True,
    },
}


def flows_dir(into: Path) -> Path:
    """The project's default flow, with a trigger that makes its test payload."""
    definition = yaml.safe_load((ROOT / "flows" / "ml-orchestration.yaml").read_text())
    definition["triggers"] = [TRIGGER]
    (into / "ml-orchestration.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    return into


def notification(n: int) -> dict[str, object]:
    """The push of a Cloud Storage notification (JSON_API_V1) of a user's upload."""
    name = f"uploads/{FULL['user_id']}-{n}.json"
    data = {
        "kind": "storage#object",
        "bucket": "uploads",
        "name": name,
        "contentType": "application/json",
        "size": "2048",
        "metadata": {"user_id": FULL["user_id"], "session_id": FULL["session_id"]},
    }
    attributes = {
        "notificationConfig": "projects/_/buckets/uploads/notificationConfigs/1",
        "eventType": "OBJECT_FINALIZE",
        "payloadFormat": "JSON_API_V1",
        "bucketId": "uploads",
        "objectId": name,
        "objectGeneration": "1733212800000000",
    }
    message = {
        "data": base64.b64encode(json.dumps(data).encode()).decode(),
        "attributes": attributes,
        "messageId": f"m-{n}",
        "publishTime": "2026-12-03T10:00:00Z",
    }
    return {"message": message, "subscription": "projects/p/subscriptions/s"}


async def cpu_per_request(
    send: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]],
    client: httpx.AsyncClient,
    runs: int,
    at_once: int,
    first: int,
) -> float:
    """Milliseconds of this process's CPU per request, `at_once` at a time."""
    gate = asyncio.Semaphore(at_once)

    async def one(n: int) -> None:
        async with gate:
            response = await send(client, n)
            assert response.status_code in (202, 204), response.text

    started = time.process_time()
    await asyncio.gather(*(one(first + n) for n in range(runs)))
    return (time.process_time() - started) * 1000 / runs


async def measure(args: argparse.Namespace) -> None:
    settings = Settings(_env_file=None, ml_auth="none", log_format="json")  # type: ignore[call-arg]
    with tempfile.TemporaryDirectory() as scratch:
        env = {name: "http://127.0.0.1:9" + path for name, path in FUNCTIONS.items()}  # not called
        flows = load_flows(flows_dir(Path(scratch)), env)
    broker = Published()  # takes each message, delivers none
    app = create_app(settings, flows, transport=broker, store=MemoryStore())
    kinds: dict[str, Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]] = {
        "POST /orchestrate": lambda client, n: client.post("/orchestrate", json=FULL),
        "an event's push": lambda client, n: client.post(
            "/pubsub/events/ml-orchestration/upload", json=notification(n)
        ),
    }
    cpu: dict[str, list[float]] = {name: [] for name in kinds}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://bench") as client,
    ):
        sent = 0
        for send in kinds.values():  # warm both up
            await cpu_per_request(send, client, 200, args.at_once, sent)
            sent += 200
        for _ in range(args.rounds):
            for name, send in kinds.items():
                cpu[name].append(await cpu_per_request(send, client, args.runs, args.at_once, sent))
                sent += args.runs
    assert len(broker.messages) == sent, (len(broker.messages), sent)  # each one accepted, once
    base = statistics.median(cpu["POST /orchestrate"])
    print(f"{args.rounds} rounds of {args.runs} requests, {args.at_once} at a time, each accepted")
    print(f"{'':<18} {'CPU ms/request':>15} {'vs front door':>14}")
    for name in kinds:
        used = statistics.median(cpu[name])
        print(f"{name:<18} {used:>15.3f} {used / base - 1:>+14.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--at-once", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    configure_logging("json", level=logging.WARNING)
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()

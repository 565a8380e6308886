"""`python -m bench.storage`: what one execution costs the Firestore store, on the real emulator.

Runs executions of the default flow (with 3 vacancies, and with 400 whose analyses
are 4 KB each) and of a one-step flow whose answer is --large-mb, through the push
handler with EXECUTION_STORE=firestore, counting
every Firestore RPC the store makes: documents written and the bytes of those
commits, documents read, time and CPU. Prints one line per case:

    per execution    writes  commit KB  reads  wall ms  CPU ms (the whole process's)

and what the front door's queued record costs a request, on memory and Firestore.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from google.cloud.firestore_v1 import types

from service.api.deps import Components
from service.app import build
from service.backends.firestore import FirestoreStore
from service.backends.memory import MemoryStore
from service.backends.store import ExecutionStore
from service.backends.transport import InProcessTransport
from service.dev.emulator import Emulator, find_firestore_emulator, free_port
from service.dev.standins import FUNCTIONS
from service.engine.flow import Flow, load_flows
from service.engine.outbound import http_clients
from service.execution import Execution, ExecutionStatus
from service.logs import configure_logging
from service.messages import SEED_PAYLOAD, PushEnvelope, PushMessage
from service.metrics import Metrics
from service.settings import Settings
from service.telemetry import Tracing

ROOT = Path(__file__).resolve().parent.parent
FULL = {**SEED_PAYLOAD, "create_user_embedding": True}
WIDE = {**FULL, "user_id": "wide"}  # match_candidato answers 400 vacancies, 4 KB analyses
LARGE_FLOW = """
steps:
  large:
    call: ${env.LARGE_URL}
    body: {n: "${input.n}"}
"""


@dataclass
class Counts:
    """Firestore RPCs the store makes, through the client or the wire: documents written
    (`writes`, and the bytes of those commits), read by id (`reads`), and queries run
    (`queries`: billed one read per document they return), counts run (`counts`)."""

    rpcs: Counter[str]

    def wrap(self, store: FirestoreStore) -> None:
        api, wire = store._client._firestore_api, store._wire

        def counted(target: Any, name: str, measure: Callable[..., tuple[str, int, int]]) -> None:
            original = getattr(target, name)

            async def call(*args: Any, **kwargs: Any) -> Any:
                kind, count, size = measure(*args, **kwargs)
                self.rpcs[kind] += count
                self.rpcs[f"{kind}_bytes"] += size
                return await original(*args, **kwargs)

            setattr(target, name, call)

        def commit(request: Any = None, **_: Any) -> tuple[str, int, int]:
            commit = types.CommitRequest.pb(types.CommitRequest(request))
            return "writes", len(commit.writes), commit.ByteSize()

        def batch_get(request: Any = None, **_: Any) -> tuple[str, int, int]:
            return "reads", len(types.BatchGetDocumentsRequest(request).documents), 0

        def wire_write(change: Any, *_: Any) -> tuple[str, int, int]:
            return "writes", 1, change.ByteSize()

        counted(api, "commit", commit)
        counted(api, "batch_get_documents", batch_get)
        counted(api, "run_query", lambda *_, **__: ("queries", 1, 0))
        # A count: billed one read per 1,000 index entries it counts.
        counted(api, "run_aggregation_query", lambda *_, **__: ("counts", 1, 0))
        counted(wire, "write", wire_write)
        counted(wire, "get", lambda *_: ("reads", 1, 0))

    def per(self, runs: int) -> dict[str, float]:
        return {key: value / runs for key, value in self.rpcs.items()}


async def stand_ins(large_bytes: int) -> tuple[web.AppRunner, str]:
    big = json.dumps({"blob": "x" * large_bytes}).encode()
    analysis = json.dumps({"fit": 0.8, "analysis": "y" * 4000}).encode()

    def vacancies(count: int) -> bytes:
        return json.dumps({"vacancies": [{"vacancy_id": f"v{n}"} for n in range(count)]}).encode()

    async def function(request: web.Request) -> web.Response:
        body = await request.json()
        wide = body.get("user_id") == "wide"
        if request.path == "/large":
            answer = big
        elif request.path == "/match-candidato":
            answer = vacancies(400 if wide else 3)
        elif request.path == "/match-analysis-user-vacancy" and wide:
            answer = analysis
        else:
            answer = b'{"ok": true}'
        return web.Response(body=answer, content_type="application/json")

    app = web.Application(client_max_size=2**20)
    app.router.add_post("/{name}", function)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def envelope(flow: str, flow_input: dict[str, Any]) -> PushEnvelope:
    message = {
        "execution_id": str(uuid.uuid4()),
        "flow": flow,
        "input": flow_input,
        "webhook_url": None,
        "requested_at": "2026-11-26T10:00:00Z",
    }
    data = base64.b64encode(json.dumps(message).encode()).decode()
    return PushEnvelope(message=PushMessage(data=data, message_id=str(uuid.uuid4())))


async def run_case(
    name: str,
    handle: Callable[[PushEnvelope], Awaitable[int]],
    counts: Counts,
    flow: str,
    flow_input: dict[str, Any],
    runs: int,
) -> None:
    counts.rpcs.clear()
    statuses: Counter[str] = Counter()
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(runs):
        try:
            statuses[str(await handle(envelope(flow, flow_input)))] += 1
        except Exception as exc:  # what the push endpoint would have answered with a 500
            statuses[f"raised {type(exc).__name__}"] += 1
    ms = (time.perf_counter() - started) * 1000 / runs
    cpu_ms = (time.process_time() - cpu) * 1000 / runs
    per = counts.per(runs)
    print(
        f"{name:<28}{per.get('writes', 0):>7.1f}{per.get('writes_bytes', 0) / 1024:>11.1f}"
        f"{per.get('reads', 0) + per.get('queries', 0):>7.1f}"
        f"{ms:>9.1f}{cpu_ms:>9.1f}  push answers {dict(statuses)}"
    )


async def enqueue_cost(name: str, store: ExecutionStore, runs: int) -> None:
    """CPU and wall time of ExecutionStore.enqueue, what POST /orchestrate adds."""
    executions = [
        Execution(
            execution_id=str(uuid.uuid4()),
            flow="ml-orchestration",
            status=ExecutionStatus.QUEUED,
            input=FULL,
            started_at=None,
        )
        for _ in range(runs)
    ]
    cpu, wall = time.process_time(), time.perf_counter()
    for execution in executions:
        await store.enqueue(execution)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"  {name:<10} {cpu * 1e6 / runs:8.0f} µs CPU {wall * 1e3 / runs:8.2f} ms wall")


@asynccontextmanager
async def on_firestore(
    project: str, flows: dict[str, Flow], **settings: Any
) -> AsyncIterator[tuple[Components, FirestoreStore, Counts]]:
    """The service's parts on the Firestore store (FIRESTORE_EMULATOR_HOST), in-process
    transport, with every Firestore RPC of the store counted."""
    config = Settings(
        _env_file=None,  # type: ignore[call-arg]
        google_cloud_project=project,
        ml_auth="none",
        execution_store="firestore",
        log_format="console",
        **settings,
    )
    store = FirestoreStore(project, "executions", timedelta(days=7))
    counts = Counts(Counter())
    counts.wrap(store)
    configure_logging("console", level=logging.WARNING)
    async with http_clients() as (http, sender):
        parts = build(
            config,
            flows,
            InProcessTransport(),
            store,
            http,
            sender,
            tracing=Tracing(),
            metrics=Metrics(),
        )
        yield parts, store, counts


async def main_async(args: argparse.Namespace) -> None:
    runner, base = await stand_ins(int(args.large_mb * 1_000_000))
    project = f"bench-{uuid.uuid4().hex[:8]}"
    flows_dir = Path(tempfile.mkdtemp())
    (flows_dir / "ml-orchestration.yaml").write_text(
        (ROOT / "flows" / "ml-orchestration.yaml").read_text()
    )
    (flows_dir / "large.yaml").write_text(LARGE_FLOW)
    env = {name: base + path for name, path in FUNCTIONS.items()} | {"LARGE_URL": f"{base}/large"}
    flows = load_flows(flows_dir, env)
    async with on_firestore(project, flows) as (parts, store, counts):
        header = ("per execution", "writes", "commit KB", "reads", "wall ms", "CPU ms")
        print("{:<28}{:>7}{:>11}{:>7}{:>9}{:>9}".format(*header))
        cases = [
            ("default flow (seed)", "ml-orchestration", FULL, args.runs),
            ("default flow, 400 vacancies", "ml-orchestration", WIDE, 2),
            (f"one {args.large_mb:g} MB output", "large", {"n": 1}, 3),
        ]
        for name, flow, flow_input, runs in cases:
            await run_case(name, parts.push.handle, counts, flow, flow_input, runs)
    print("\nthe front door's queued record, per request:")
    for store_name, queued_store in (("memory", MemoryStore()), ("firestore", store)):
        await enqueue_cost(store_name, queued_store, args.runs * 10)
    await store.close()
    await runner.cleanup()


def on_emulator(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` with a Firestore emulator of its own (FIRESTORE_EMULATOR_HOST)."""
    jar = find_firestore_emulator()
    if jar is None:
        work.close()
        raise SystemExit("the Firestore emulator is not installed (see README, Prerequisites)")
    emulator = Emulator.start_firestore(jar, log=Path(tempfile.mkdtemp()) / "firestore.log")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        asyncio.run(work)
    finally:
        emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--large-mb", type=float, default=3.0)
    args = parser.parse_args()
    on_emulator(main_async(args))


if __name__ == "__main__":
    main()

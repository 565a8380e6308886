"""`python -m bench.children`: a parent whose `flow:` step runs --children child executions
of a one-call flow (all at once: max_concurrency = --children, at most 1,000), against
stand-in functions at --delay-ms in their own process. Through the embedded transport
and the push handler in this process; with --firestore (its emulator) also on that
store, with its Firestore writes and reads per child; with --push also through the
Pub/Sub emulator pushing to the service in its own process (`python -m service`, on
the Firestore emulator with --firestore). Prints the wall time from the parent's
request to its end against the critical path (one call), and CPU per child.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from bench.cases.emulator import count_pushes, pushed_rate
from bench.processes import Process
from bench.run import PROJECT, TOPIC
from bench.storage import Counts, on_emulator, on_firestore
from service.api.deps import Components
from service.app import build
from service.backends.memory import MemoryStore
from service.backends.transport import InProcessTransport
from service.dev.emulator import Emulator, EmulatorAdmin, find_emulator
from service.dev.standins import FUNCTIONS
from service.engine.flow import Flow, load_flows
from service.engine.outbound import http_clients
from service.execution import TERMINAL, UNDERWAY
from service.logs import configure_logging
from service.messages import RequestMessage
from service.metrics import Metrics
from service.settings import Settings
from service.telemetry import Tracing

UNDERWAY_STATUSES = {status.value for status in UNDERWAY}

PARENT = """
input:
  vacancies: {type: array, required: true}
steps:
  each:
    flow: child
    for_each: ${input.vacancies}
    max_concurrency: CHILDREN
    input: {user_id: u, session_id: s, vacancy_id: "${item}"}
"""

CHILD = """
input:
  user_id: {type: string, required: true}
  session_id: {type: string, required: true}
  vacancy_id: {type: string, required: true}
steps:
  analyse:
    call: ${env.DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL}
    body: {user_id: "${input.user_id}", session_id: s, vacancy_id: "${input.vacancy_id}"}
"""


def flows_dir(children: int) -> Path:
    folder = Path(tempfile.mkdtemp())
    (folder / "parent.yaml").write_text(PARENT.replace("CHILDREN", str(children)))
    (folder / "child.yaml").write_text(CHILD)
    return folder


def urls(functions_url: str) -> dict[str, str]:
    return {name: functions_url + path for name, path in FUNCTIONS.items()}


@asynccontextmanager
async def in_memory(loaded: dict[str, Flow]) -> AsyncIterator[Components]:
    settings = Settings(_env_file=None, ml_auth="none", log_format="console")  # type: ignore[call-arg]
    store = MemoryStore(capacity=100_000)
    configure_logging("console", level=logging.WARNING)
    async with http_clients() as (http, sender):
        transport = InProcessTransport()
        yield build(
            settings, loaded, transport, store, http, sender, tracing=Tracing(), metrics=Metrics()
        )


async def one_parent(parts: Components, children: int) -> tuple[float, float]:
    """Wall and CPU seconds from the parent's request to its end."""
    parent = f"parent-{uuid.uuid4().hex[:8]}"
    vacancies = [f"v{n}" for n in range(children)]
    message = RequestMessage(execution_id=parent, flow="parent", input={"vacancies": vacancies})
    started, cpu = time.perf_counter(), time.process_time()
    await parts.requests.publish(message)
    while True:
        execution = await parts.store.get(parent)
        if execution is not None and execution.status in TERMINAL:
            break
        await asyncio.sleep(0.01)
    assert execution.status.value == "succeeded", execution.error
    return time.perf_counter() - started, time.process_time() - cpu


def report(name: str, children: int, delay_ms: float, wall: float, cpu: float) -> None:
    print(
        f"{name}: {children} children in {wall * 1000:,.0f} ms (critical path {delay_ms:g} ms: "
        f"one call), {cpu * 1000 / children:.2f} ms CPU per child"
    )


async def main_async(args: argparse.Namespace, functions_url: str) -> None:
    loaded = load_flows(flows_dir(args.children), urls(functions_url))
    async with in_memory(loaded) as parts:
        await one_parent(parts, 10)  # warm up
        wall, cpu = await one_parent(parts, args.children)
        report("memory store", args.children, args.delay_ms, wall, cpu)
    if args.firestore:
        project = f"bench-{uuid.uuid4().hex[:8]}"
        async with on_firestore(project, loaded) as (firestore, store, counts):
            await one_parent(firestore, 10)
            counts.rpcs.clear()
            wall, cpu = await one_parent(firestore, args.children)
            report("Firestore emulator", args.children, args.delay_ms, wall, cpu)
            per = Counts.per(counts, args.children)
            print(
                f"  per child: {per.get('writes', 0):.1f} writes, {per.get('reads', 0):.1f} "
                f"reads, {per.get('queries', 0):.2f} queries, {per.get('counts', 0):.2f} counts"
            )
            await store.close()
    if args.push:
        await through_push(args, functions_url)


async def through_push(args: argparse.Namespace, functions_url: str) -> None:
    """The parent and its children through the Pub/Sub emulator's push to the service."""
    binary = find_emulator()
    if binary is None:
        raise SystemExit("the Pub/Sub emulator is not installed (see README, Prerequisites)")
    work = Path(tempfile.mkdtemp())
    emulator = Emulator.start(binary, log=work / "pubsub.log")
    settings = urls(functions_url) | {
        "FLOWS_DIR": str(flows_dir(args.children)),
        "DEFAULT_FLOW": "parent",
        "ML_AUTH": "none",
        "ML_MAX_CONCURRENCY_PER_HOST": "10000",
        "PUBSUB_EMULATOR_HOST": emulator.host,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
    }
    if args.firestore:
        settings["EXECUTION_STORE"] = "firestore"
    service = None
    try:
        admin = EmulatorAdmin(emulator.host, PROJECT)
        admin.topic(TOPIC)
        service = Process.start("service", ["-m", "service"], settings, "/ready", work / "log")
        admin.push_subscription("children-push", TOPIC, f"{service.url}/pubsub/push")
        store = "Firestore emulator" if args.firestore else "memory store"
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            await pushed_parent(client, 10)  # warm up
            cpu = service.cpu_seconds()
            wall = await pushed_parent(client, args.children)
            used = service.cpu_seconds() - cpu
        report(f"Pub/Sub emulator push, {store}", args.children, args.delay_ms, wall, used)
        bare = Process.start("bare", ["bench/bare.py"], {}, "/health", work / "bare.log")
        try:
            admin.topic("ceiling")
            admin.push_subscription("ceiling-push", "ceiling", f"{bare.url}/pubsub/push")
            rate = await pushed_rate(admin, "ceiling", args.children, lambda: count_pushes(bare))
        finally:
            bare.stop()
        print(
            f"  ceiling, same run: the emulator pushes {rate:.1f} messages/s to an endpoint "
            f"that answers 204 at once; the parent's children went at "
            f"{args.children / wall:.1f}/s ({args.children / wall / rate:.0%})"
        )
    finally:
        if service is not None:
            service.stop()
        emulator.stop()


async def pushed_parent(client: httpx.AsyncClient, children: int) -> float:
    """Wall seconds from POST /orchestrate of a parent to its end."""
    vacancies = [f"v{n}" for n in range(children)]
    started = time.perf_counter()
    answer = await client.post("/orchestrate", json={"flow": "parent", "vacancies": vacancies})
    assert answer.status_code == 202, answer.text
    execution_id = answer.json()["execution_id"]
    while True:
        execution = (await client.get(f"/executions/{execution_id}")).json()
        if execution["status"] not in UNDERWAY_STATUSES:
            break
        await asyncio.sleep(0.05)
    assert execution["status"] == "succeeded", execution.get("error")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.children")
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--firestore", action="store_true", help="also on its emulator")
    parser.add_argument("--push", action="store_true", help="also through the Pub/Sub emulator")
    args = parser.parse_args()
    if not 1 <= args.children <= 1000:
        parser.error("--children: 1 to 1000 (a step's max_concurrency)")
    log = Path(tempfile.mkdtemp()) / "functions.log"
    env = {"DELAY_MS": str(args.delay_ms)}
    functions = Process.start("functions", ["bench/functions.py"], env, "/health", log)
    try:
        if args.firestore:
            on_emulator(main_async(args, functions.url))
        else:
            asyncio.run(main_async(args, functions.url))
    finally:
        functions.stop()


if __name__ == "__main__":
    main()

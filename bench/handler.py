"""The push handler in this process, against stand-in functions: CPU per execution."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.processes import ROOT
from service.app import build
from service.backends.memory import MemoryStore
from service.backends.store import ExecutionStore
from service.backends.transport import InProcessTransport
from service.dev.standins import FUNCTIONS
from service.engine.flow import load_flows
from service.engine.outbound import http_clients
from service.execution import Execution, ExecutionStatus
from service.messages import SEED_PAYLOAD, PushEnvelope, PushMessage
from service.metrics import Metrics
from service.settings import Settings
from service.telemetry import Tracing

FULL = {**SEED_PAYLOAD, "create_user_embedding": True}
PRODUCER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def envelope(
    flow: str, flow_input: dict[str, Any], execution_id: str | None = None
) -> PushEnvelope:
    execution_id = execution_id or str(uuid.uuid4())
    message = {"execution_id": execution_id, "flow": flow, "input": flow_input}
    data = base64.b64encode(json.dumps(message).encode()).decode()
    attributes = {"googclient_traceparent": PRODUCER}
    return PushEnvelope(
        message=PushMessage(data=data, attributes=attributes, message_id=str(uuid.uuid4()))
    )


def queued(flow: str, flow_input: dict[str, Any]) -> Execution:
    """What the front door records before it publishes the execution's message."""
    return Execution(
        execution_id=str(uuid.uuid4()),
        flow=flow,
        status=ExecutionStatus.QUEUED,
        input=flow_input,
        started_at=None,
    )


async def cpu_per_execution(
    functions_url: str,
    runs: int,
    at_once: int,
    tracing: Tracing | None = None,
    flows_dir: Path = ROOT / "flows",
    flow: str = "ml-orchestration",
    flow_input: dict[str, Any] = FULL,
    store: ExecutionStore | None = None,
    front_door: bool = False,
    counts: Counter[str] | None = None,
) -> float:
    """Milliseconds of this process's CPU per execution of `flow`, `at_once` at a time,
    on `store` (memory by default); with `front_door`, its `queued` record first.
    `counts` is cleared after the warm-up."""
    tracing = tracing or Tracing()
    store = store or MemoryStore()
    env = {name: functions_url + path for name, path in FUNCTIONS.items()}
    flows = load_flows(flows_dir, env)
    settings = Settings(_env_file=None, ml_auth="none", log_format="json")  # type: ignore[call-arg]
    async with http_clients() as (http, sender):
        parts = build(
            settings,
            flows,
            InProcessTransport(),
            store,
            http,
            sender,
            tracing=tracing,
            metrics=Metrics(),
        )
        handler = parts.push

        async def one() -> None:
            execution_id = None
            if front_door:
                execution = queued(flow, flow_input)
                await store.enqueue(execution)
                execution_id = execution.execution_id
            assert await handler.handle(envelope(flow, flow_input, execution_id)) == 204

        for _ in range(20):  # warm up
            await one()
        limit = asyncio.Semaphore(at_once)

        async def limited() -> None:
            async with limit:
                await one()

        if counts is not None:
            counts.clear()
        cpu = time.process_time()
        await asyncio.gather(*(limited() for _ in range(runs)))
        tracing.shutdown()
        return (time.process_time() - cpu) * 1000 / runs

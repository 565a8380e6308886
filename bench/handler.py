"""The push handler in this process, against stand-in functions: CPU per execution."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

from bench.processes import ROOT
from service.app import build
from service.backends.memory import MemoryStore
from service.backends.transport import InProcessTransport
from service.dev.standins import FUNCTIONS
from service.engine.flow import load_flows
from service.engine.outbound import http_clients
from service.messages import SEED_PAYLOAD, PushEnvelope, PushMessage
from service.settings import Settings
from service.telemetry import Tracing

FULL = {**SEED_PAYLOAD, "create_user_embedding": True}
PRODUCER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def envelope(flow: str, flow_input: dict[str, Any]) -> PushEnvelope:
    message = {"execution_id": str(uuid.uuid4()), "flow": flow, "input": flow_input}
    data = base64.b64encode(json.dumps(message).encode()).decode()
    attributes = {"googclient_traceparent": PRODUCER}
    return PushEnvelope(
        message=PushMessage(data=data, attributes=attributes, message_id=str(uuid.uuid4()))
    )


async def cpu_per_execution(
    functions_url: str,
    runs: int,
    at_once: int,
    tracing: Tracing | None = None,
    flows_dir: Path = ROOT / "flows",
    flow: str = "ml-orchestration",
    flow_input: dict[str, Any] = FULL,
) -> float:
    """Milliseconds of this process's CPU per execution of `flow`, `at_once` at a time."""
    tracing = tracing or Tracing()
    env = {name: functions_url + path for name, path in FUNCTIONS.items()}
    flows = load_flows(flows_dir, env)
    settings = Settings(_env_file=None, ml_auth="none", log_format="json")  # type: ignore[call-arg]
    async with http_clients() as (http, sender):
        handler = build(
            settings, flows, InProcessTransport(), MemoryStore(), http, sender, tracing
        ).push
        for _ in range(20):  # warm up
            await handler.handle(envelope(flow, flow_input))
        limit = asyncio.Semaphore(at_once)

        async def one() -> None:
            async with limit:
                assert await handler.handle(envelope(flow, flow_input)) == 204

        cpu = time.process_time()
        await asyncio.gather(*(one() for _ in range(runs)))
        tracing.shutdown()
        return (time.process_time() - cpu) * 1000 / runs

"""In-memory ML functions (httpx.MockTransport) and a runner for the engine's tests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from service.calls import MLCaller
from service.flow import Flow, load_flow
from service.messages import Execution, ExecutionStatus
from service.runner import FlowRunner
from service.tokens import NoTokens

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Functions:
    """ML functions answering per path, recording call intervals and concurrency.

    They answer `{"path", "body"}`, or `answers[path]` where one is set.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.statuses: dict[str, list[int]] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.intervals: dict[str, list[tuple[float, float]]] = {}
        self.bodies: dict[str, list[object]] = {}
        self.answers: dict[str, object] = {}
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        started = time.perf_counter()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        self.intervals.setdefault(path, []).append((started, time.perf_counter()))
        body = json.loads(request.content) if request.content else None
        self.bodies.setdefault(path, []).append(body)
        queued = self.statuses.get(path) or []
        status = queued.pop(0) if queued else 200
        if status != 200:
            return httpx.Response(status, text="scripted", headers=self.headers.get(path, {}))
        return httpx.Response(200, json=self.answers.get(path, {"path": path, "body": body}))


def flow_from(tmp_path: Path, text: str) -> Flow:
    path = tmp_path / "test-flow.yaml"
    path.write_text(text)
    return load_flow(path, {})


async def run(
    flow: Flow, functions: Handler, inputs: dict[str, object] | None = None, timeout_s: float = 30
) -> Execution:
    async with httpx.AsyncClient(transport=httpx.MockTransport(functions)) as client:
        runner = FlowRunner(MLCaller(client, NoTokens()), timeout_s)
        execution = Execution(
            execution_id="e1",
            flow=flow.name,
            status=ExecutionStatus.RUNNING,
            input=flow.validate_input(inputs or {}),
        )
        return await runner.run(flow, execution)

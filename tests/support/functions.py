"""In-memory ML functions (httpx.MockTransport), a Sender over them, a runner for the engine."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from service.engine.flow import Flow, load_flow
from service.engine.outbound import Answer, NoAnswer, encode_json, read_bounded
from service.execution import Execution, ExecutionStatus
from tests.support.engine import make_caller, make_runner

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


class HttpxSender:
    """The engine's Sender over an httpx client, so that tests can use httpx.MockTransport.

    Production sends with service.engine.outbound.AiohttpSender (on loopback:
    tests/engine/test_calls.py).
    """

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def send(
        self, method: str, url: str, body: Any, headers: Mapping[str, str], timeout_s: float
    ) -> Answer:
        content = None if method == "GET" else encode_json(body)
        request = self._client.build_request(
            method, url, content=content, headers=headers, timeout=timeout_s
        )
        try:
            response = await self._client.send(request, stream=True)
            try:
                declared = response.headers.get("content-length")
                data = await read_bounded(response.aiter_bytes(), declared)
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise NoAnswer.timed_out(timeout_s) from None
        except httpx.ConnectError as exc:
            raise NoAnswer.cannot_connect(exc) from None
        return Answer(response.status_code, data, response.headers.get("retry-after"))


def flow_from(tmp_path: Path, text: str) -> Flow:
    path = tmp_path / "test-flow.yaml"
    path.write_text(text)
    return load_flow(path, {})


async def run(
    flow: Flow,
    functions: Handler,
    inputs: dict[str, object] | None = None,
    timeout_s: float = 30,
    execution: Execution | None = None,
) -> Execution:
    """Run `flow` as a new execution with `inputs`, or run `execution` (a resumed one) again."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(functions)) as client:
        runner = make_runner(make_caller(HttpxSender(client)), timeout_s)
        if execution is not None:
            return await runner.run(flow, execution)
        execution = Execution(
            execution_id="e1",
            flow=flow.name,
            status=ExecutionStatus.RUNNING,
            input=flow.validate_input(inputs or {}),
        )
        return await runner.run(flow, execution)

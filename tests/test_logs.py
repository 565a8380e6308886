"""Logs in Cloud Logging's shape, with the execution's context and the request's trace."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.logs import SPAN_KEY, TRACE_KEY, configure_logging
from service.telemetry import TraceContext


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("json", stream=stream, project="my-project")
    yield stream
    configure_logging("json")


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_one_json_object_in_cloud_logging_shape(lines: io.StringIO) -> None:
    with structlog.contextvars.bound_contextvars(execution_id="e-1", flow="f"):
        structlog.get_logger("test").warning("step finished", step="a", attempt=2)
    [record] = records(lines)
    assert record["severity"] == "WARNING"
    assert record["message"] == "step finished"
    assert str(record["time"]).endswith("Z")
    assert {"execution_id": "e-1", "flow": "f", "step": "a", "attempt": 2}.items() <= record.items()


def test_standard_library_loggers_come_out_the_same_way(lines: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").error("boom %s", 1)
    [record] = records(lines)
    assert record["severity"] == "ERROR"
    assert record["message"] == "boom 1"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Cloud-Trace-Context", "105445aa7843bc8bf206b12000100000/1;o=1"),
        ("traceparent", "00-105445aa7843bc8bf206b12000100000-00f067aa0ba902b7-01"),
    ],
)
async def test_the_incoming_trace_is_on_every_line_of_the_request_or_a_new_one(
    lines: io.StringIO, header: str, value: str
) -> None:
    async def endpoint(request: Request) -> PlainTextResponse:
        structlog.get_logger("test").info("inside")
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(TraceContext)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/", headers={header: value})
        await client.get("/")
    with_trace, without = records(lines)
    assert with_trace[TRACE_KEY] == "projects/my-project/traces/105445aa7843bc8bf206b12000100000"
    assert len(str(with_trace[SPAN_KEY])) == 16
    # A request without a trace starts one: its lines are still grouped.
    assert str(without[TRACE_KEY]).startswith("projects/my-project/traces/")
    assert without[TRACE_KEY] != with_trace[TRACE_KEY]


def test_console_format_renders_for_people(lines: io.StringIO) -> None:
    stream = io.StringIO()
    configure_logging("console", stream=stream)
    structlog.get_logger("test").info("hello", execution_id="e-2")
    assert "hello" in stream.getvalue() and "e-2" in stream.getvalue()

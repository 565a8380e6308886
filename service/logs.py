"""Logs: one JSON object per line in Cloud Logging's shape, or a console rendering.

Context (execution_id, flow, step, trace) is bound with contextvars, so every
line of an execution carries it. The trace comes from the incoming
X-Cloud-Trace-Context or traceparent header, which links logs to Cloud Trace.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

TRACE_KEY = "logging.googleapis.com/trace"
_CLOUD_TRACE = re.compile(r"^([0-9a-fA-F]{32})(?:/|;|$)")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def _cloud_logging_shape(_: Any, method: str, event: MutableMapping[str, Any]) -> Any:
    event["severity"] = "WARNING" if method == "warn" else method.upper()
    event["message"] = event.pop("event", "")
    event.pop("level", None)
    return event


def _drop_unset(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
    return {key: value for key, value in event.items() if value is not None}


def configure_logging(
    log_format: str, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Set up structlog and route the standard library's loggers through it (to stdout)."""
    stream = stream or sys.stdout
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _drop_unset,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    ]
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer()
    else:
        shared += [structlog.processors.format_exc_info, _cloud_logging_shape]
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared, processors=[_remove_meta, renderer]
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


def _remove_meta(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    return event


def _dumps(value: Any, **_: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def trace_id(headers: dict[bytes, bytes]) -> str | None:
    """The trace id of an incoming request, from Cloud's or W3C's header."""
    cloud = headers.get(b"x-cloud-trace-context")
    if cloud:
        match = _CLOUD_TRACE.match(cloud.decode("latin-1"))
        if match:
            return match.group(1).lower()
    parent = headers.get(b"traceparent")
    if parent:
        match = _TRACEPARENT.match(parent.decode("latin-1").strip())
        if match:
            return match.group(1)
    return None


class TraceContext:
    """ASGI middleware binding each request's trace to every log line it causes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace = trace_id(dict(scope["headers"]))
        if trace is None:
            await self.app(scope, receive, send)
            return
        project = getattr(scope["app"].state, "trace_project", None)
        value = f"projects/{project}/traces/{trace}" if project else trace
        with structlog.contextvars.bound_contextvars(**{TRACE_KEY: value}):
            await self.app(scope, receive, send)

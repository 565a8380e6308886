"""Logs: one JSON object per line in Cloud Logging's shape, or a console rendering.

Context (execution_id, flow, step) is bound with contextvars, so every line of an
execution carries it. Each line also carries its trace and span (service/telemetry.py:
the producer's trace, from the request or the message), which links it to Cloud Trace.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import orjson
import structlog

from service.telemetry import current_ids

TRACE_KEY = "logging.googleapis.com/trace"
SPAN_KEY = "logging.googleapis.com/spanId"
SAMPLED_KEY = "logging.googleapis.com/trace_sampled"


def _cloud_logging_shape(_: Any, method: str, event: MutableMapping[str, Any]) -> Any:
    event["severity"] = "WARNING" if method == "warn" else method.upper()
    event["message"] = event.pop("event", "")
    event.pop("level", None)
    return event


def _drop_unset(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
    return {key: value for key, value in event.items() if value is not None}


def configure_logging(
    log_format: str,
    level: int = logging.INFO,
    stream: TextIO | None = None,
    project: str | None = None,
) -> None:
    """Set up structlog and route the standard library's loggers through it (to stdout).

    `project` makes trace ids Cloud Logging's `projects/PROJECT/traces/ID`.
    """
    # Standard output as it is at each line, not as it was now: whoever replaces
    # sys.stdout later (a test's capture, then closed) must not take the logs with it.
    stream = stream or cast(TextIO, _StandardOutput())

    def add_trace(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
        ids = current_ids()
        if ids is not None:
            trace, span, sampled = ids
            event[TRACE_KEY] = f"projects/{project}/traces/{trace}" if project else trace
            event[SPAN_KEY] = span
            event[SAMPLED_KEY] = sampled
        return event

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_trace,
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


class _StandardOutput:
    """sys.stdout, looked up at every write."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def _remove_meta(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    return event


def _dumps(value: Any, **_: Any) -> str:
    try:  # orjson: a line in a quarter of json's time (a line per step and per execution)
        return orjson.dumps(value, default=str).decode()
    except TypeError:  # an integer past 64 bits, a key that is not a string
        return json.dumps(value, default=str, ensure_ascii=False)

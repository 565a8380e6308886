"""Traces: one trace from the producer's request through Pub/Sub to every ML call and webhook.

Propagation needs no exporter: the trace context comes in as `traceparent` (or
`X-Cloud-Trace-Context`) on `POST /orchestrate`, crosses Pub/Sub in the message
attribute `googclient_traceparent` (google-cloud-pubsub's own OpenTelemetry
convention), and goes out as `traceparent` on every ML call and webhook POST, so
the functions' own spans and logs join it. A request without a trace starts one.

Spans are recorded only when an exporter is configured:

    OTEL_EXPORTER_OTLP_ENDPOINT set          OTLP over HTTP (protobuf)
    on Cloud Run (K_SERVICE set)             Cloud Trace
    OTEL_TRACES_EXPORTER=none                neither, wherever it runs

Sampling follows the standard OTEL_TRACES_SAMPLER settings (the SDK reads them).
With no exporter no span is made at all and the incoming context passes through as
it is: tracing off costs a header parse and an attribute per message.

    TOPIC publish (producer)                 POST /orchestrate's publish (or a re-drive's)
      push (consumer)                        POST /pubsub/push, one delivery
        execution FLOW                       one execution (or its delivery)
          step NAME                          one step
            call STEP (client)               one call attempt: attempt, status
          webhook (client)                   one webhook attempt
"""

from __future__ import annotations

import functools
import os
import secrets
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.cloud_trace_propagator import CloudTraceFormatPropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Receive, Scope, Send

MESSAGE_ATTRIBUTE = "googclient_traceparent"
SERVICE_NAME = "ml-orchestrator"

_W3C = TraceContextTextMapPropagator()
_INCOMING = CompositePropagator([_W3C, CloudTraceFormatPropagator()])

Context = otel_context.Context


class Tracing:
    """Spans when an exporter is set (`tracer`), else nothing but propagation."""

    def __init__(
        self, tracer: trace.Tracer | None = None, provider: TracerProvider | None = None
    ) -> None:
        self._tracer = tracer
        self._provider = provider

    @property
    def on(self) -> bool:
        return self._tracer is not None

    @contextmanager
    def span(
        self,
        name: str,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[trace.Span | None]:
        """A span of the current trace, or (tracing off) nothing at all."""
        if self._tracer is None:
            yield None
            return
        with self._tracer.start_as_current_span(name, kind=kind, attributes=attributes) as span:
            yield span

    def incoming(self, headers: Mapping[str, str]) -> Context:
        """The request's trace context (W3C or Cloud's header), or a new trace."""
        context = _INCOMING.extract(headers)
        return context if _valid(context) else self._new_trace()

    def from_message(self, attributes: Mapping[str, str] | None) -> Context:
        """The producer's trace context carried by a request message, or a new trace."""
        parent = (attributes or {}).get(MESSAGE_ATTRIBUTE)
        context = _W3C.extract({"traceparent": parent}) if parent else None
        return context if context is not None and _valid(context) else self._new_trace()

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()

    def _new_trace(self) -> Context:
        if self.on:
            return Context()  # the next span starts a trace, sampled as OTEL_TRACES_SAMPLER says
        span_context = SpanContext(
            trace_id=secrets.randbits(128) or 1,
            span_id=secrets.randbits(64) or 1,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.DEFAULT),
        )
        return trace.set_span_in_context(NonRecordingSpan(span_context))


def tracing_from_environment(exporter: SpanExporter | None = None) -> Tracing:
    """Tracing as the environment asks (see the module's table); `exporter` overrides it."""
    exporter = exporter or _exporter()
    if exporter is None:
        return Tracing()
    provider = TracerProvider(resource=process_resource())
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider.get_tracer("service"), provider)


def _exporter() -> SpanExporter | None:
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if os.environ.get("K_SERVICE"):  # Cloud Run
        from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter

        return CloudTraceSpanExporter()  # type: ignore[no-untyped-call]
    return None


@functools.cache
def process_resource() -> Resource:
    """What traces and metrics of this process say they come from.

    `service.instance.id` is one per process: the worker processes of one instance
    (WEB_CONCURRENCY) each keep their own cumulative metrics, which must not collide.
    """
    attributes = {
        "service.name": os.environ.get("K_SERVICE", SERVICE_NAME),
        "service.instance.id": str(uuid.uuid4()),
    }
    resource = Resource.create(attributes)
    if os.environ.get("K_SERVICE"):
        from opentelemetry.resourcedetector.gcp_resource_detector import (
            GoogleCloudResourceDetector,
        )

        resource = resource.merge(GoogleCloudResourceDetector(raise_on_error=False).detect())
    return resource


def message_attributes() -> dict[str, str]:
    """The current trace context as request-message attributes."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    parent = carrier.get("traceparent")
    return {MESSAGE_ATTRIBUTE: parent} if parent else {}


def outgoing_headers() -> dict[str, str]:
    """The current trace context as W3C headers for a call out."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier


@contextmanager
def within(context: Context) -> Iterator[None]:
    """Make `context` current for the block (and the tasks it starts)."""
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def current_ids() -> tuple[str, str, bool] | None:
    """(trace id, span id, sampled) of the current context, for log lines."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return (
        format(span_context.trace_id, "032x"),
        format(span_context.span_id, "016x"),
        span_context.trace_flags.sampled,
    )


def _valid(context: Context) -> bool:
    return trace.get_current_span(context).get_span_context().is_valid


class TraceContext:
    """ASGI middleware: each request runs in its trace (so do its log lines)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        components = getattr(scope["app"].state, "components", None)
        tracing = components.tracing if components is not None else Tracing()
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _TRACE_HEADERS
        }
        with within(tracing.incoming(headers)):
            await self.app(scope, receive, send)


_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"x-cloud-trace-context"})

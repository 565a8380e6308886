"""The one publisher of request messages: a new request and a resumed execution look the
same on the topic and in traces, but for the trace the push continues."""

from __future__ import annotations

import json

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.execution import Execution, ExecutionStatus
from service.messages import RequestMessage
from service.telemetry import MESSAGE_ATTRIBUTE, Tracing
from service.worker.publisher import RequestPublisher
from tests.support.fakes import RecordingTransport

PRODUCER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_a_request_and_a_resume_are_published_alike_in_their_own_traces() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    transport = RecordingTransport()
    requests = RequestPublisher(transport, "requests", Tracing(provider.get_tracer("t"), provider))
    waiting = Execution(
        execution_id="e-1", flow="nap", status=ExecutionStatus.WAITING, input={"n": 1}, run=2
    )
    waiting.traceparent = PRODUCER
    await requests.publish(RequestMessage.of(waiting), run=2)
    await requests.resume(waiting)

    (new, new_attributes), (resumed, resumed_attributes) = [
        (json.loads(data), attributes) for _, data, attributes in transport.published
    ]
    assert new == resumed and new["execution_id"] == "e-1"
    for attributes in (new_attributes, resumed_attributes):
        assert {k: attributes[k] for k in ("execution_id", "flow", "run")} == {
            "execution_id": "e-1",
            "flow": "nap",
            "run": "2",
        }
    first, second = exporter.get_finished_spans()
    assert (
        (first.name, first.kind)
        == (second.name, second.kind)
        == ("requests publish", SpanKind.PRODUCER)
    )
    assert dict(first.attributes or {}) == dict(second.attributes or {})
    # A new request's push continues the publish span; a resume, its producer's trace.
    assert new_attributes[MESSAGE_ATTRIBUTE].split("-")[2] == f"{first.context.span_id:016x}"
    assert resumed_attributes[MESSAGE_ATTRIBUTE] == PRODUCER

"""Traces with the real OpenTelemetry SDK: one trace from the producer's request to every
ML call and webhook, spans as documented, an OTLP receiver on loopback."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.app import create_app
from service.dev.emulator import Emulator, EmulatorAdmin, free_port
from service.dev.servers import serve
from service.dev.standins import StandIns, WebhookReceiver
from service.telemetry import Tracing, tracing_from_environment
from tests.support.otlp import otlp_receiver
from tests.support.project import WEBHOOK_SECRET, full_seed, make_settings, project_flows

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER = f"00-{TRACE}-00f067aa0ba902b7-01"


@dataclass
class Traced:
    url: str
    functions: StandIns
    webhook: WebhookReceiver
    webhook_url: str

    def run(self, headers: dict[str, str] | None = None) -> str:
        body = full_seed(webhook_url=self.webhook_url)
        response = httpx.post(f"{self.url}/orchestrate", json=body, headers=headers or {})
        execution_id: str = response.json()["execution_id"]
        deadline = time.monotonic() + 20
        while not self.webhook.deliveries:
            assert time.monotonic() < deadline, "no webhook"
            time.sleep(0.02)
        return execution_id


def traced_service(tracing: Tracing) -> Iterator[Traced]:
    functions = StandIns(delay_s=0.01)
    webhook = WebhookReceiver(WEBHOOK_SECRET)
    with serve(functions.app()) as functions_url, serve(webhook.app()) as webhook_url:
        settings = make_settings(webhook_allow_private_networks=True)
        app = create_app(settings, project_flows(functions_url), tracing=tracing)
        with serve(app) as url:
            yield Traced(url, functions, webhook, f"{webhook_url}/hook")


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(exporter: InMemorySpanExporter) -> Iterator[Traced]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield from traced_service(Tracing(provider.get_tracer("test"), provider))


@pytest.fixture
def untraced() -> Iterator[Traced]:
    yield from traced_service(Tracing())


def pushed(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    """The finished spans once the push's own has ended: it ends after the webhook, when
    the delivery is stored."""
    deadline = time.monotonic() + 10
    while not any(span.name == "push" for span in exporter.get_finished_spans()):
        assert time.monotonic() < deadline, "the push span never ended"
        time.sleep(0.02)
    return exporter.get_finished_spans()


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_one_trace_runs_from_the_producer_through_every_call_and_webhook(
    traced: Traced, exporter: InMemorySpanExporter
) -> None:
    traced.functions.script["/match-candidato"] = [503]  # retried once
    traced.run({"traceparent": PRODUCER})
    spans = pushed(exporter)
    assert {format(span.context.trace_id, "032x") for span in spans} == {TRACE}
    named = by_name(spans)
    [publish] = named["ml-orchestration-requests publish"]
    [push] = named["push"]
    [execution] = named["execution ml-orchestration"]
    assert parent_of(publish) == 0x00F067AA0BA902B7  # the producer's span
    assert parent_of(push) == publish.context.span_id
    assert parent_of(execution) == push.context.span_id
    steps = {name: spans_[0] for name, spans_ in named.items() if name.startswith("step ")}
    assert set(steps) == {
        "step create_user_embeddings",
        "step profession_orchestrator",
        "step match_candidato",
        "step match_analysis_user_vacancy",
    }
    assert {parent_of(step) for step in steps.values()} == {execution.context.span_id}
    attempts = named["call match_candidato"]
    assert [a.attributes["attempt"] for a in attempts] == [1, 2]  # type: ignore[index]
    assert [a.attributes["http.response.status_code"] for a in attempts] == [503, 200]  # type: ignore[index]
    assert attempts[0].status.status_code.name == "ERROR"
    assert {parent_of(a) for a in attempts} == {steps["step match_candidato"].context.span_id}
    assert len(named["call match_analysis_user_vacancy"]) == 3
    [webhook] = named["webhook"]
    assert parent_of(webhook) == execution.context.span_id
    # Every ML call and the webhook carried the trace, each with its own call span as parent.
    calls = {
        span.context.span_id
        for name, list_ in named.items()
        if name.startswith("call ")
        for span in list_
    }
    for call in traced.functions.calls:
        _, trace, parent, _ = (call.traceparent or "").split("-")
        assert trace == TRACE and int(parent, 16) in calls
    [delivery] = traced.webhook.deliveries
    assert delivery.headers["traceparent"].split("-")[1:3] == [
        TRACE,
        format(webhook.context.span_id, "016x"),
    ]


def test_the_trace_travels_without_an_exporter(untraced: Traced) -> None:
    """Tracing off: no span is made, yet the producer's trace reaches every function."""
    untraced.run({"x-cloud-trace-context": f"{TRACE}/1;o=1"})
    traces = Counter((call.traceparent or "").split("-")[1] for call in untraced.functions.calls)
    assert traces == {TRACE: 6}
    assert untraced.webhook.deliveries[0].headers["traceparent"].split("-")[1] == TRACE


def test_a_request_without_a_trace_starts_one(untraced: Traced) -> None:
    untraced.run()
    traces = {(call.traceparent or "").split("-")[1] for call in untraced.functions.calls}
    assert len(traces) == 1 and len(traces.pop()) == 32


def test_spans_reach_an_otlp_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT set: spans go out as OTLP protobuf over HTTP."""
    with otlp_receiver("/v1/traces", ExportTraceServiceRequest) as (receiver_url, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver_url)
        tracing = tracing_from_environment()
        assert tracing.on
        for service in traced_service(tracing):
            service.run({"traceparent": PRODUCER})
        tracing.shutdown()  # flushes the batch
    spans = [
        span
        for request in received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert {span.trace_id.hex() for span in spans} == {TRACE}
    names = {span.name for span in spans}
    assert {"push", "execution ml-orchestration", "webhook"} <= names
    [resource] = {
        attribute.value.string_value
        for request in received
        for resource in request.resource_spans
        for attribute in resource.resource.attributes
        if attribute.key == "service.name"
    }
    assert resource == "ml-orchestrator"


def test_no_exporter_means_no_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "K_SERVICE"):
        monkeypatch.delenv(name, raising=False)
    assert not tracing_from_environment().on
    monkeypatch.setenv("K_SERVICE", "ml-orchestrator")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not tracing_from_environment().on


@pytest.mark.emulator
def test_one_trace_crosses_the_emulator_with_the_sdk_recording(
    emulator: Emulator, exporter: InMemorySpanExporter
) -> None:
    """The real SDK in the service, the real Pub/Sub emulator between its two halves."""
    project = f"trace-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    functions = StandIns(delay_s=0.01)
    webhook = WebhookReceiver(WEBHOOK_SECRET)
    port = free_port()
    admin = EmulatorAdmin(emulator.host, project)
    admin.topic("requests")
    admin.push_subscription("push", "requests", f"http://127.0.0.1:{port}/pubsub/push")
    with serve(functions.app()) as functions_url, serve(webhook.app()) as webhook_url:
        settings = make_settings(
            google_cloud_project=project,
            pubsub_emulator_host=emulator.host,
            orchestration_topic="requests",
            webhook_allow_private_networks=True,
        )
        tracing = Tracing(provider.get_tracer("test"), provider)
        app = create_app(settings, project_flows(functions_url), tracing=tracing)
        with serve(app, port=port) as url:
            service = Traced(url, functions, webhook, f"{webhook_url}/hook")
            service.run({"traceparent": PRODUCER})
    spans = exporter.get_finished_spans()
    named = by_name(spans)
    assert {format(span.context.trace_id, "032x") for span in spans} == {TRACE}
    [publish] = named["requests publish"]
    [push] = named["push"]
    assert parent_of(push) == publish.context.span_id  # across the emulator
    assert len([n for n in named if n.startswith("call ")]) == 4
    assert {(c.traceparent or "").split("-")[1] for c in functions.calls} == {TRACE}

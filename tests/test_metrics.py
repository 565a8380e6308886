"""GET /metrics: OpenTelemetry metrics in Prometheus' text format, parsed with
prometheus-client's own parser, moving as executions succeed, fail and retry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.dev.servers import serve
from service.dev.standins import StandIns, WebhookReceiver
from service.errors import ConfigError
from service.metrics import Metrics, metric_exporter_names, metric_exporters_from_environment
from service.telemetry import process_resource
from tests.support.otlp import otlp_receiver
from tests.support.project import WEBHOOK_SECRET, make_settings, project_flows


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def service() -> Iterator[tuple[str, StandIns, WebhookReceiver, str]]:
    functions = StandIns(delay_s=0.01)
    webhook = WebhookReceiver(WEBHOOK_SECRET)
    with serve(functions.app()) as functions_url, serve(webhook.app()) as webhook_url:
        app = create_app(
            make_settings(
                webhook_allow_private_networks=True, default_webhook_url=f"{webhook_url}/hook"
            ),
            project_flows(functions_url),
        )
        with serve(app) as url:
            yield url, functions, webhook, httpx.URL(functions_url).netloc.decode()


def run(url: str, webhook: WebhookReceiver, count: int) -> None:
    body = {"user_id": "u", "session_id": "s", "process_vacancy_orchestrator": True}
    assert httpx.post(f"{url}/orchestrate", json=body).status_code == 202
    deadline = time.monotonic() + 20
    while len(webhook.deliveries) < count:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_counters_move_as_executions_succeed_fail_and_retry(
    service: tuple[str, StandIns, WebhookReceiver, str],
) -> None:
    url, functions, webhook, host = service
    before = samples(url)
    assert value(before, "orchestrator_executions_in_flight") == 0
    functions.script["/match-candidato"] = [503, 400]  # retried, then final: failed
    run(url, webhook, 1)
    run(url, webhook, 2)  # succeeds
    assert httpx.post(f"{url}/orchestrate", json={"session_id": "s"}).status_code == 422
    after = samples(url)
    flow = "ml-orchestration"
    assert value(after, "orchestrator_executions_total", flow=flow, status="failed") == 1
    assert value(after, "orchestrator_executions_total", flow=flow, status="succeeded") == 1
    assert value(after, "orchestrator_frontdoor_requests_total", status="202") == 2
    assert value(after, "orchestrator_frontdoor_requests_total", status="422") == 1
    outcomes = {
        (dict(labels)["host"], dict(labels)["outcome"]): n
        for (name, labels), n in after.items()
        if name == "orchestrator_ml_calls_total"
    }
    assert outcomes == {(host, "retryable"): 1, (host, "final"): 1, (host, "success"): 4}
    assert value(after, "orchestrator_webhook_deliveries_total", outcome="delivered") == 2
    steps = value(
        after,
        "orchestrator_step_duration_seconds_count",
        flow=flow,
        step="match_candidato",
        status="succeeded",
    )
    assert steps == 1
    assert (
        value(after, "orchestrator_execution_duration_seconds_count", flow=flow, status="failed")
        == 1
    )
    assert after[("orchestrator_executions_in_flight", frozenset())] == 0  # there, and zero
    # Low-cardinality labels only: no execution id anywhere.
    label_names = {name for (_, labels) in after for name, _ in labels}
    assert label_names <= {"flow", "status", "step", "host", "outcome", "le"}


def test_metrics_need_an_operator_in_production() -> None:
    settings = make_settings(push_auth_audience="https://orchestrator.example")
    with serve(create_app(settings, project_flows())) as url:
        response = httpx.get(f"{url}/metrics")
    assert response.status_code == 403 and "ADMIN_EMAILS" in response.json()["detail"]


def test_metrics_reach_an_otlp_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_METRICS_EXPORTER=otlp: the same instruments go out as OTLP protobuf."""
    with otlp_receiver("/v1/metrics", ExportMetricsServiceRequest) as (receiver_url, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver_url)
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
        metrics = Metrics(metric_exporters_from_environment(), export_interval_s=0.1)
        metrics.executions.add(2, {"flow": "f", "status": "succeeded"})
        deadline = time.monotonic() + 10
        while not received:
            assert time.monotonic() < deadline, "nothing exported"
            time.sleep(0.05)
        metrics.shutdown()
    names = {
        metric.name: metric
        for request in received
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    resources = {
        attribute.key: attribute.value.string_value
        for request in received
        for resource in request.resource_metrics
        for attribute in resource.resource.attributes
    }
    # One series per worker process: their cumulative counts must not collide.
    assert resources["service.instance.id"] == process_resource().attributes["service.instance.id"]
    [point] = names["orchestrator_executions"].sum.data_points
    assert point.as_int == 2
    assert {a.key: a.value.string_value for a in point.attributes} == {
        "flow": "f",
        "status": "succeeded",
    }


def test_an_unknown_metrics_exporter_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp,statsd")
    with pytest.raises(ConfigError, match="OTEL_METRICS_EXPORTER: unknown exporter 'statsd'"):
        metric_exporter_names()
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "gcp_monitoring, otlp")
    assert metric_exporter_names() == ["gcp_monitoring", "otlp"]


def test_counters_are_cumulative_per_label_set_whatever_the_labels_order() -> None:
    """Counters are plain numbers read by observable instruments at collection time."""
    metrics = Metrics()
    metrics.ml_calls.add(1, {"host": "a", "outcome": "success"})
    metrics.ml_calls.add(2, {"outcome": "success", "host": "a"})
    metrics.in_flight.add(1)
    metrics.in_flight.add(1)
    metrics.in_flight.add(-1)
    found = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.text().decode())
        for sample in family.samples
    }
    assert value(found, "orchestrator_ml_calls_total", host="a", outcome="success") == 3
    assert value(found, "orchestrator_executions_in_flight") == 1
    metrics.ml_calls.add(1, {"host": "a", "outcome": "success"})
    again = text_string_to_metric_families(metrics.text().decode())
    totals = [s.value for f in again for s in f.samples if s.name == "orchestrator_ml_calls_total"]
    assert totals == [4]

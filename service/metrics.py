"""Metrics (OpenTelemetry), served at GET /metrics in Prometheus' text format.

    orchestrator_executions_total{flow,status}                  executions that ended
    orchestrator_execution_duration_seconds{flow,status}        their duration
    orchestrator_step_duration_seconds{flow,step,status}        each step's duration
    orchestrator_ml_calls_total{host,outcome[,variant]}         call attempts: success,
                                                                retryable, final, budget_refused
                                                                (`variant` on a step with variants)
    orchestrator_webhook_deliveries_total{outcome}              webhook attempts: delivered,
                                                                gone, failed, refused
    orchestrator_executions_in_flight                           running on this instance
    orchestrator_frontdoor_requests_total{status}               POST /orchestrate answers
    orchestrator_waits_total{flow,kind}                         executions suspended, by what
                                                                their first waiting step waits for
    orchestrator_wakes_total{outcome}                           due executions: woken, not_published
    orchestrator_callbacks_total{outcome}                       POST /callbacks answers: accepted,
                                                                answered, gone, unknown
    orchestrator_cache_total{flow,step,outcome}                 cached steps' lookups: hit, miss,
                                                                joined (a miss under way here)
    orchestrator_shadow_total{flow,step,outcome}                shadow calls: agree, disagree,
                                                                error, primary_failed
    orchestrator_shadow_duration_seconds{flow,step,side}        a shadowed call's latency, of
                                                                each side: primary, shadow
    orchestrator_trigger_total{flow,trigger,outcome}            events pushed to triggers:
                                                                started, filtered, rejected,
                                                                unknown (no flow declares it)
    orchestrator_limit_waiting{key}                             calls waiting for room in a limit
    orchestrator_limit_wait_seconds{key}                        how long those waited

Labels are low-cardinality on purpose: never an execution id. Each app has its own
registry, so several apps in one process (tests) never mix their figures.

OTEL_METRICS_EXPORTER also sends them out, every EXPORT_INTERVAL_S: `otlp` (to
OTEL_EXPORTER_OTLP_ENDPOINT), `gcp_monitoring` (Cloud Monitoring, as
workload.googleapis.com/NAME, one series per instance), or both, comma-separated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from service.errors import ConfigError
from service.telemetry import process_resource

# Seconds: from a fast step to the longest execution Cloud Run allows (600 s).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
CONTENT_TYPE = CONTENT_TYPE_LATEST
EXPORT_INTERVAL_S = 60.0  # Cloud Monitoring takes a point per series every 5 s at most
EXPORTERS = ("otlp", "gcp_monitoring")


class Tally:
    """A counter kept as plain numbers, one per label set, that an observable instrument
    reads when metrics are collected: an `add` is a dict update (~1 us) instead of the
    SDK's synchronous instrument (~10-16 us with its labels, bench/tracing.py's notes)."""

    def __init__(self, meter: Meter, name: str, description: str, up_down: bool = False) -> None:
        self.name = name
        self._counts: dict[tuple[tuple[str, Any], ...], float] = {}
        make = (
            meter.create_observable_up_down_counter if up_down else meter.create_observable_counter
        )
        make(name, callbacks=[self._observe], description=description)

    def add(self, amount: float, attributes: Mapping[str, Any] | None = None) -> None:
        key = tuple(sorted(attributes.items())) if attributes else ()
        self._counts[key] = self._counts.get(key, 0) + amount

    def _observe(self, options: CallbackOptions) -> list[Observation]:
        counts = dict(self._counts)  # one step under the GIL: an exporter's thread reads too
        return [Observation(value, dict(key)) for key, value in counts.items()]


class Metrics:
    """The instruments, and their current values as Prometheus text."""

    def __init__(
        self, exporters: Sequence[MetricExporter] = (), export_interval_s: float = EXPORT_INTERVAL_S
    ) -> None:
        self._registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(
            disable_target_info=True, scope_info_enabled=False, registry=self._registry
        )
        exporting = [
            PeriodicExportingMetricReader(exporter, export_interval_millis=export_interval_s * 1000)
            for exporter in exporters
        ]
        # Only exporters tell where figures come from (and on Cloud Run it asks the metadata).
        resource = process_resource() if exporters else None
        self._provider = MeterProvider(metric_readers=[reader, *exporting], resource=resource)
        meter = self._provider.get_meter("service")
        self.executions = Tally(
            meter, "orchestrator_executions", "Executions that ended, by flow and status"
        )
        self.execution_duration = meter.create_histogram(
            "orchestrator_execution_duration",
            unit="s",
            description="Duration of ended executions",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.step_duration = meter.create_histogram(
            "orchestrator_step_duration",
            unit="s",
            description="Duration of steps, by flow, step and status",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.ml_calls = Tally(
            meter, "orchestrator_ml_calls", "ML call attempts, by host and outcome"
        )
        self.webhook_deliveries = Tally(
            meter, "orchestrator_webhook_deliveries", "Webhook attempts, by outcome"
        )
        self.in_flight = Tally(
            meter, "orchestrator_executions_in_flight", "Executions running here now", up_down=True
        )
        self.frontdoor_requests = Tally(
            meter, "orchestrator_frontdoor_requests", "POST /orchestrate answers, by status"
        )
        self.waits = Tally(
            meter, "orchestrator_waits", "Executions suspended, by flow and kind of wait"
        )
        self.wakes = Tally(
            meter, "orchestrator_wakes", "Due waiting executions sent to resume, by outcome"
        )
        self.callbacks = Tally(meter, "orchestrator_callbacks", "Callbacks posted, by outcome")
        self.cache = Tally(
            meter, "orchestrator_cache", "Step cache lookups, by flow, step and outcome"
        )
        self.shadows = Tally(
            meter, "orchestrator_shadow", "Shadow calls, by flow, step and outcome"
        )
        self.shadow_duration = meter.create_histogram(
            "orchestrator_shadow_duration",
            unit="s",
            description="Latency of shadowed calls, by flow, step and side (primary, shadow)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.triggers = Tally(
            meter, "orchestrator_trigger", "Events of triggers, by flow, trigger and outcome"
        )
        self.limit_waiting = Tally(
            meter, "orchestrator_limit_waiting", "Calls waiting for room in a limit, by key", True
        )
        self.limit_wait = meter.create_histogram(
            "orchestrator_limit_wait",
            unit="s",
            description="Time calls waited for room in a limit, by key",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

    def text(self) -> bytes:
        """Every metric in Prometheus' text exposition format."""
        return generate_latest(self._registry)

    def shutdown(self) -> None:
        self._provider.shutdown()


def metric_exporter_names() -> list[str]:
    """The exporters OTEL_METRICS_EXPORTER names; ConfigError for a name we do not know."""
    names = [
        name.strip().lower()
        for name in os.environ.get("OTEL_METRICS_EXPORTER", "").split(",")
        if name.strip() and name.strip().lower() not in {"none", "prometheus"}
    ]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise ConfigError(
            f"OTEL_METRICS_EXPORTER: unknown exporter {unknown[0]!r} (use {', '.join(EXPORTERS)})"
        )
    return names


def metric_exporters_from_environment() -> list[MetricExporter]:
    """The exporters OTEL_METRICS_EXPORTER names (see the module's docstring)."""
    names = metric_exporter_names()
    exporters: list[MetricExporter] = []
    if "otlp" in names:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporters.append(OTLPMetricExporter())
    if "gcp_monitoring" in names:
        from opentelemetry.exporter.cloud_monitoring import CloudMonitoringMetricsExporter

        # One series per instance: instances writing one series would collide.
        exporters.append(CloudMonitoringMetricsExporter(add_unique_identifier=True))
    return exporters

"""Metrics (OpenTelemetry), served at GET /metrics in Prometheus' text format.

    orchestrator_executions_total{flow,status}                  executions that ended
    orchestrator_execution_duration_seconds{flow,status}        their duration
    orchestrator_step_duration_seconds{flow,step,status}        each step's duration
    orchestrator_ml_calls_total{host,outcome}                   call attempts: success,
                                                                retryable, final, budget_refused
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
from collections.abc import Sequence

from opentelemetry.exporter.prometheus import PrometheusMetricReader
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
        self.executions = meter.create_counter(
            "orchestrator_executions", description="Executions that ended, by flow and status"
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
        self.ml_calls = meter.create_counter(
            "orchestrator_ml_calls", description="ML call attempts, by host and outcome"
        )
        self.webhook_deliveries = meter.create_counter(
            "orchestrator_webhook_deliveries", description="Webhook attempts, by outcome"
        )
        self.in_flight = meter.create_up_down_counter(
            "orchestrator_executions_in_flight", description="Executions running here now"
        )
        self.frontdoor_requests = meter.create_counter(
            "orchestrator_frontdoor_requests", description="POST /orchestrate answers, by status"
        )

        self.waits = meter.create_counter(
            "orchestrator_waits", description="Executions suspended, by flow and kind of wait"
        )
        self.wakes = meter.create_counter(
            "orchestrator_wakes", description="Due waiting executions sent to resume, by outcome"
        )
        self.callbacks = meter.create_counter(
            "orchestrator_callbacks", description="Callbacks posted, by outcome"
        )
        self.cache = meter.create_counter(
            "orchestrator_cache", description="Step cache lookups, by flow, step and outcome"
        )
        self.limit_waiting = meter.create_up_down_counter(
            "orchestrator_limit_waiting", description="Calls waiting for room in a limit, by key"
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

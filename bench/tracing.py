"""`python -m bench.tracing`: what tracing costs an execution of the default flow.

The push handler runs --runs executions (--concurrency at a time) in this process
against the stand-in functions in their own process (bench/functions.py), with
tracing off (propagation only), then on with every trace sampled and the spans
batched to an exporter that drops them (the SDK's own work, not a network's).
Prints the CPU of this process per execution for each, and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.handler import cpu_per_execution
from bench.processes import Process
from service.logs import configure_logging
from service.telemetry import Tracing


class Dropped(SpanExporter):
    """Takes every batch and keeps nothing: measures the SDK, not an exporter's network."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=20)
    args = parser.parse_args()
    configure_logging("json", level=logging.WARNING)
    log = Path(tempfile.mkdtemp()) / "functions.log"
    functions = Process.start(
        "functions", ["bench/functions.py"], {"DELAY_MS": str(args.delay_ms)}, "/health", log
    )
    try:
        off = asyncio.run(cpu_per_execution(functions.url, args.runs, args.concurrency))
        provider = TracerProvider()
        dropped = Dropped()
        provider.add_span_processor(BatchSpanProcessor(dropped))
        on = Tracing(provider.get_tracer("bench"), provider)
        sampled = asyncio.run(
            cpu_per_execution(functions.url, args.runs, args.concurrency, tracing=on)
        )
    finally:
        functions.stop()
    spans = dropped.spans / (args.runs + 20)
    print(f"CPU per execution of the default flow ({args.runs} runs, {args.concurrency} at once):")
    print(f"  tracing off (propagation only)   {off:6.2f} ms")
    print(f"  tracing on, sampled 1.0          {sampled:6.2f} ms  ({spans:.0f} spans each)")
    print(f"  difference                       {sampled - off:+6.2f} ms ({sampled / off:.2f}x)")


if __name__ == "__main__":
    main()

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
import base64
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.processes import ROOT, Process
from service.app import build, make_http_client
from service.dev.demo import FUNCTIONS
from service.flow import load_flows
from service.logs import configure_logging
from service.messages import SEED_PAYLOAD, PushEnvelope, PushMessage
from service.settings import Settings
from service.store import MemoryStore
from service.telemetry import Tracing
from service.transport import InProcessTransport

FULL = {**SEED_PAYLOAD, "create_user_embedding": True}
PRODUCER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Dropped(SpanExporter):
    """Takes every batch and keeps nothing: measures the SDK, not an exporter's network."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def envelope() -> PushEnvelope:
    message = {"execution_id": str(uuid.uuid4()), "flow": "ml-orchestration", "input": FULL}
    data = base64.b64encode(json.dumps(message).encode()).decode()
    attributes = {"googclient_traceparent": PRODUCER}
    return PushEnvelope(
        message=PushMessage(data=data, attributes=attributes, message_id=str(uuid.uuid4()))
    )


async def cpu_per_execution(functions_url: str, tracing: Tracing, runs: int, at_once: int) -> float:
    flows = load_flows(
        ROOT / "flows", {name: functions_url + path for name, path in FUNCTIONS.items()}
    )
    settings = Settings(_env_file=None, ml_auth="none", log_format="json")  # type: ignore[call-arg]
    async with make_http_client() as http:
        handler = build(settings, flows, InProcessTransport(), MemoryStore(), http, tracing).push
        for _ in range(20):  # warm up
            await handler.handle(envelope())
        limit = asyncio.Semaphore(at_once)

        async def one() -> None:
            async with limit:
                assert await handler.handle(envelope()) == 204

        cpu = time.process_time()
        await asyncio.gather(*(one() for _ in range(runs)))
        tracing.shutdown()
        return (time.process_time() - cpu) * 1000 / runs


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
        off = asyncio.run(cpu_per_execution(functions.url, Tracing(), args.runs, args.concurrency))
        provider = TracerProvider()
        dropped = Dropped()
        provider.add_span_processor(BatchSpanProcessor(dropped))
        on = Tracing(provider.get_tracer("bench"), provider)
        sampled = asyncio.run(cpu_per_execution(functions.url, on, args.runs, args.concurrency))
    finally:
        functions.stop()
    spans = dropped.spans / (args.runs + 20)
    print(f"CPU per execution of the default flow ({args.runs} runs, {args.concurrency} at once):")
    print(f"  tracing off (propagation only)   {off:6.2f} ms")
    print(f"  tracing on, sampled 1.0          {sampled:6.2f} ms  ({spans:.0f} spans each)")
    print(f"  difference                       {sampled - off:+6.2f} ms ({sampled / off:.2f}x)")


if __name__ == "__main__":
    main()

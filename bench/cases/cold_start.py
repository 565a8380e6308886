"""Cold start: the first execution a new instance runs, pushed as soon as it is ready,
against the same instance's warm executions. The service calls with Google ID tokens
from a metadata server that answers after TOKEN_DELAY_MS (bench/functions.py), as on
Cloud Run, where every instance scaled from zero starts with none."""

from __future__ import annotations

import statistics

from bench.cases.engine import pusher
from bench.load import in_flight
from bench.processes import Process
from bench.run import FULL, Bench

TOKEN_DELAY_MS = 30


async def run(bench: Bench, functions: Process) -> None:
    issuer = bench.functions(bench.args.delay_ms, TOKEN_DELAY_MS=str(TOKEN_DELAY_MS))
    metadata = f"127.0.0.1:{issuer.port}"
    first, warm = [], []
    try:
        for _ in range(bench.sizes.cold_starts):
            service = bench.service(
                issuer, ML_AUTH="id_token", GCE_METADATA_HOST=metadata, GCE_METADATA_IP=metadata
            )
            try:
                first.append((await in_flight(pusher(service.url, FULL), 1, 1)).values[0])
                warm.append((await in_flight(pusher(service.url, FULL), 1, 10)).percentile(50))
            finally:
                service.stop()
    finally:
        issuer.stop()
    extra = [a - b for a, b in zip(first, warm, strict=True)]
    bench.report.add(
        "first execution after start (ID tokens)",
        f"+{statistics.median(extra):.1f} ms over a warm one (median of {len(extra)} starts)",
        f"warm p50 {statistics.median(warm):.0f} ms; tokens at {TOKEN_DELAY_MS} ms each",
        f"spread {min(extra):+.1f} to {max(extra):+.1f} ms (goal ≤ +20 ms)",
    )

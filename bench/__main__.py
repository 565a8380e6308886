"""`python -m bench`: the orchestrator's overhead, each figure against a ceiling measured in
the same run on the same machine. Prints a table, writes table.md, results.json and
performance.png into --out.

Cases (stand-in ML functions answer after --delay-ms, in their own process):
  1. front door   POST /orchestrate (publish awaited, emulator) vs a bare FastAPI 202
  2. engine       the default flow pushed straight to /pubsub/push at 1/100/1000 in flight:
                  execution time minus its critical path called by a bare client
  3. fan-out      one execution calling 10/100/1000 functions at once vs a bare client loop
  4. memory       RSS of the service with 1,000 executions in flight
  5. original     the seed's test payload run one call at a time (the monolith) vs ours
  6. emulator     end-to-end executions/s through the emulator vs its own push rate
  7. workers      front door and engine with two worker processes vs one (Firestore store)
  8. store        an execution on Firestore vs the memory store: CPU, writes, reads;
                  what a wake and a cache hit add
  9. cold start   the first execution of a new instance (ID tokens to fetch) vs a warm one
--tiny runs every case at a small size (CI checks that the benchmark keeps working).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.cases import (
    cold_start,
    emulator,
    engine,
    fan_out,
    front_door,
    memory,
    original,
    store,
    workers,
)
from bench.processes import ROOT, Process
from bench.run import Bench, write_outputs
from service.dev.emulator import Emulator, find_emulator

Case = Callable[[Bench, Process], Awaitable[None]]
CASES: dict[str, Case] = {
    "front-door": front_door.run,
    "engine": engine.run,
    "fan-out": fan_out.run,
    "memory": memory.run,
    "original": original.run,
    "emulator": emulator.run,
    "workers": workers.run,
    "store": store.run,
    "cold-start": cold_start.run,
}


async def run(bench: Bench, cases: list[str]) -> None:
    functions = bench.functions(bench.args.delay_ms)
    try:
        for case in cases:
            print(f"{case} ...", flush=True)
            await CASES[case](bench, functions)
    finally:
        functions.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="every case, small (for CI)")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="stand-in latency")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance")
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"some of {','.join(CASES)}; a partial run prints its rows and writes nothing",
    )
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory() as workdir:
        bench = Bench(args, Path(workdir))
        binary = find_emulator()
        if binary:
            bench.emulator = Emulator.start(binary, log=Path(workdir) / "emulator.log")
        try:
            asyncio.run(run(bench, cases))
        finally:
            if bench.emulator:
                bench.emulator.stop()
        if cases == list(CASES):
            write_outputs(bench.report, args.out, args)
        else:
            print("\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in bench.report.rows))


if __name__ == "__main__":
    main()

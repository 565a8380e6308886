"""Workers: the service as one worker process and as two (WEB_CONCURRENCY), sharing an
execution store on the Firestore emulator: the front door's rate and the engine's
executions/s at 100 in flight, each with CPU per request or execution (all processes)."""

from __future__ import annotations

from bench.cases.engine import pusher
from bench.cases.front_door import poster
from bench.load import closed_loop, in_flight
from bench.processes import Process
from bench.run import FULL, PROJECT, TOPIC, Bench
from service.dev.emulator import Emulator, EmulatorAdmin, find_firestore_emulator


async def run(bench: Bench, functions: Process) -> None:
    jar = find_firestore_emulator()
    if bench.emulator is None or jar is None:
        bench.report.add("workers", "not measured: no Pub/Sub or Firestore emulator", "", "")
        return
    EmulatorAdmin(bench.emulator.host, PROJECT).topic(TOPIC)
    firestore = Emulator.start_firestore(jar, log=bench.log("firestore"))
    front: dict[int, tuple[float, float]] = {}
    engine: dict[int, tuple[float, float]] = {}
    try:
        for workers in (1, 2):
            service = bench.service(
                functions,
                pubsub=True,
                EXECUTION_STORE="firestore",
                FIRESTORE_EMULATOR_HOST=firestore.host,
                WEB_CONCURRENCY=str(workers),
            )
            try:
                await closed_loop(poster(service.url), 10, 0.5)  # warm up every worker
                await in_flight(pusher(service.url, FULL), 10, 20)
                used = service.cpu_seconds()
                accepted = await closed_loop(poster(service.url), 50, bench.sizes.seconds)
                per_request = (service.cpu_seconds() - used) / max(1, len(accepted.values))
                front[workers] = (accepted.rate, per_request * 1000)
                used = service.cpu_seconds()
                ran = await in_flight(pusher(service.url, FULL), 100, bench.sizes.cpu_runs)
                per_execution = (service.cpu_seconds() - used) / bench.sizes.cpu_runs
                engine[workers] = (ran.rate, per_execution * 1000)
            finally:
                service.stop()
    finally:
        firestore.stop()
    for name, figures, unit in (
        ("front door, max rate (50 connections)", front, "req/s"),
        ("engine at 100 in flight", engine, "executions/s"),
    ):
        bench.report.add(
            f"{name}, 2 workers (Firestore emulator)",
            f"{figures[2][0]:,.0f} {unit}, {figures[2][1]:.2f} ms CPU each",
            f"1 worker {figures[1][0]:,.0f} {unit}, {figures[1][1]:.2f} ms CPU each",
            f"{figures[2][0] / figures[1][0]:.2f}x",
        )

"""The store: an execution of the default flow on Firestore (its emulator) against the
same on the memory store, in this process, 20 in flight, stand-in functions in their own:
CPU per execution from the front door's `queued` record to the end, and the Firestore
documents written and read. Then what a wake and a cache hit add to an execution."""

from __future__ import annotations

import logging
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from bench.handler import cpu_per_execution
from bench.processes import Process
from bench.run import FULL, SEED, Bench
from bench.storage import Counts
from bench.waits import counted_costs
from service.backends.firestore import FirestoreStore
from service.backends.memory import MemoryStore
from service.dev.emulator import Emulator, find_firestore_emulator
from service.logs import configure_logging

AT_ONCE = 20
# The goals of the production store's issue.
CPU_GOAL = 2.0  # times the memory store's CPU per execution
WRITES_GOAL = 4  # per default-flow execution (the original request)
WAKE_GOAL = CACHE_GOAL = (1, 1)  # reads, writes


@contextmanager
def firestore_emulator(bench: Bench) -> Iterator[str | None]:
    jar = find_firestore_emulator()
    if jar is None:
        yield None
        return
    emulator = Emulator.start_firestore(jar, log=bench.log("firestore-store"))
    before = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        yield emulator.host
    finally:
        emulator.stop()
        if before is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = before


async def run(bench: Bench, functions: Process) -> None:
    configure_logging("json", level=logging.WARNING)  # as bench.tracing: the store's cost
    with firestore_emulator(bench) as host:
        if host is None:
            bench.report.add("store", "not measured: no Firestore emulator", "", "")
            return
        runs = bench.sizes.cpu_runs
        for name, flow_input in (("the original request", SEED), ("with embeddings", FULL)):
            memory = await cpu_per_execution(
                functions.url,
                runs,
                AT_ONCE,
                flow_input=flow_input,
                store=MemoryStore(),
                front_door=True,
            )
            store = FirestoreStore(f"bench-{uuid.uuid4().hex[:8]}", "executions", timedelta(days=7))
            counts = Counts(Counter())
            counts.wrap(store)
            try:
                firestore = await cpu_per_execution(
                    functions.url,
                    runs,
                    AT_ONCE,
                    flow_input=flow_input,
                    store=store,
                    front_door=True,
                    counts=counts.rpcs,
                )
            finally:
                await store.close()
            per = counts.per(runs)
            goal = f"goal ≤ {CPU_GOAL:g}x, ≤ {WRITES_GOAL} writes" if flow_input is SEED else ""
            bench.report.add(
                f"store: default flow, {name}, {AT_ONCE} in flight (Firestore emulator)",
                f"{firestore:.2f} ms CPU, {per.get('writes', 0):.1f} writes, "
                f"{per.get('reads', 0) + per.get('queries', 0):.1f} reads",
                f"memory store {memory:.2f} ms CPU",
                f"{firestore / memory:.2f}x{'; ' + goal if goal else ''}",
            )
        costs = await counted_costs(5 if bench.args.tiny else 20)
    for name, (reads, writes), (read_goal, write_goal) in (
        ("a wake (each execution woken)", costs["wake"], WAKE_GOAL),
        ("a cache hit (against the call it replaces)", costs["cache hit"], CACHE_GOAL),
    ):
        bench.report.add(
            f"store: {name}",
            f"{reads:+.1f} reads, {writes:+.1f} writes",
            f"goal ≤ {read_goal} read, ≤ {write_goal} write",
            "met" if reads <= read_goal and writes <= write_goal else "not met",
        )

"""`python -m bench.waits`: what a waiting execution costs, on the real Firestore emulator.

1. A flow of two calls, then the same with a sleep between them (INLINE_WAIT_S=0, so
   the execution suspends), each driven through the push handler: Firestore documents
   written and read, and CPU, per execution; the difference is the wait's cost
   (suspend, wake, resume).
2. What an instance holds for waiting executions: Python heap (tracemalloc) and asyncio
   tasks before and after suspending --held of them.
3. --many waiting executions (seeded as `suspend` leaves them, in batches) woken by
   repeated `wake` calls (at most 500 each): calls, time, CPU, documents read and written.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.storage import Counts, on_emulator, on_firestore, stand_ins
from service.backends.firestore import FirestoreStore
from service.backends.store import ExecutionStore
from service.backends.transport import Deliver
from service.engine.flow import load_flows
from service.execution import Execution, ExecutionStatus, StepResult, StepStatus, Wait
from service.messages import PushEnvelope, PushMessage
from service.metrics import Metrics
from service.telemetry import Tracing
from service.worker.publisher import RequestPublisher
from service.worker.wakes import Wakes

TWO_CALLS = """
input:
  user_id: {type: string, required: true}
steps:
  first:
    call: ${env.BASE_URL}/first
    body: {user_id: "${input.user_id}"}
  second:
    after: [first]
    call: ${env.BASE_URL}/second
    body: {user_id: "${input.user_id}"}
"""
WITH_SLEEP = TWO_CALLS.replace(
    "  second:\n    after: [first]",
    "  nap:\n    after: [first]\n    sleep: 10ms\n  second:\n    after: [nap]",
)


def waker(store: ExecutionStore, published: Published) -> Wakes:
    """The wakes of one instance, publishing to `published`."""
    return Wakes(store, RequestPublisher(published, "requests", Tracing()), Metrics())


class Published:
    """A transport that keeps what is published (the wake's resumes) and delivers nothing."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, dict[str, str]]] = []

    async def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        self.messages.append((data, attributes))
        return str(len(self.messages))

    async def check(self, topic: str) -> None:
        return None

    def subscribe(self, topic: str, deliver: Deliver) -> None:
        return None

    async def close(self) -> None:
        return None


def envelope(flow: str, execution_id: str) -> PushEnvelope:
    message = {"execution_id": execution_id, "flow": flow, "input": {"user_id": "u"}}
    data = base64.b64encode(json.dumps(message).encode()).decode()
    return PushEnvelope(message=PushMessage(data=data, message_id=str(uuid.uuid4())))


def resume_envelope(data: bytes, attributes: dict[str, str]) -> PushEnvelope:
    encoded = base64.b64encode(data).decode()
    return PushEnvelope(
        message=PushMessage(data=encoded, attributes=attributes, message_id=str(uuid.uuid4()))
    )


def per(counts: Counts, runs: int, returned: int = 0) -> tuple[float, float]:
    """Documents written and read per execution; a query is billed a read per document
    it returns (`returned`, at least one), which the counts see as one call."""
    writes = counts.rpcs["writes"] / runs
    queries = counts.rpcs["queries"]
    gets = counts.rpcs["reads"]
    return writes, (gets + max(queries, returned)) / runs


async def cycle_costs(parts: Any, store: FirestoreStore, counts: Counts, runs: int) -> None:
    """Two calls, then two calls with a suspended wait between them."""
    wakes = waker(store, published := Published())
    print(f"{'per execution':<34}{'writes':>7}{'reads':>7}{'CPU ms':>8}{'wall ms':>9}")
    for name in ("two-calls", "with-sleep"):
        ids = [str(uuid.uuid4()) for _ in range(runs)]
        counts.rpcs.clear()
        cpu, wall = time.process_time(), time.perf_counter()
        for execution_id in ids:
            assert await parts.push.handle(envelope(name, execution_id)) == 204
        if name == "with-sleep":
            await asyncio.sleep(0.05)  # the 10 ms sleeps are due
            while await wakes.wake():
                pass
            for data, attributes in published.messages:
                assert await parts.push.handle(resume_envelope(data, attributes)) == 204
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        writes, reads = per(counts, runs, len(published.messages) if name == "with-sleep" else 0)
        cpu_ms, wall_ms = cpu * 1e3 / runs, wall * 1e3 / runs
        print(f"{name:<34}{writes:>7.1f}{reads:>7.1f}{cpu_ms:>8.2f}{wall_ms:>9.1f}")
        for execution_id in ids:
            stored = await store.get(execution_id)
            assert stored is not None and stored.status == ExecutionStatus.SUCCEEDED, stored


async def held(parts: Any, count: int) -> None:
    """The heap and tasks of this process before and after `count` executions suspend."""
    tracemalloc.start()
    await asyncio.sleep(0)
    tasks = len(asyncio.all_tasks())
    before = tracemalloc.take_snapshot()
    for _ in range(count):
        assert await parts.push.handle(envelope("with-sleep-long", str(uuid.uuid4()))) == 204
    await asyncio.sleep(1.5)  # the cancel watch ends once nothing runs
    after = tracemalloc.take_snapshot()
    changes = after.compare_to(before, "lineno")
    grown = sum(stat.size_diff for stat in changes)
    tracemalloc.stop()
    print(
        f"\n{count} executions suspended: heap {grown / 1024:+.0f} KB "
        f"({grown / count:+.0f} B each), asyncio tasks {tasks} -> {len(asyncio.all_tasks())}; "
        "grew most:"
    )
    for stat in changes[:3]:
        print(f"  {stat.size_diff / 1024:+8.0f} KB  {stat.traceback}")


def seeded(store: FirestoreStore, execution_id: str, due: datetime) -> dict[str, Any]:
    """The head `suspend` leaves for a sleep that was due at `due`."""
    wait = Wait(kind="sleep", timeout_at=due)
    execution = Execution(
        execution_id=execution_id,
        flow="with-sleep",
        status=ExecutionStatus.WAITING,
        input={"user_id": "u"},
        flow_version="bench",
        steps={"nap": StepResult(status=StepStatus.WAITING, wake_at=due, wait=wait)},
        wake_at=due,
    )
    fields, _ = store._document(execution)
    return fields | {"owner": None, "lease_until": None, "delivered": False}


async def many(store: FirestoreStore, counts: Counts, count: int) -> None:
    due = datetime.now(UTC) - timedelta(seconds=1)
    started = time.perf_counter()
    for offset in range(0, count, 500):
        batch = store._client.batch()
        for _ in range(min(500, count - offset)):
            execution_id = str(uuid.uuid4())
            batch.set(store._collection.document(execution_id), seeded(store, execution_id, due))
        await batch.commit()
    seeded_s = time.perf_counter() - started
    published = Published()
    wakes = waker(store, published)
    counts.rpcs.clear()
    calls = 0
    cpu, wall = time.process_time(), time.perf_counter()
    while await wakes.wake():
        calls += 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    writes = counts.rpcs["writes"]
    queries = counts.rpcs["queries"]
    # A query is billed one read per document it returns (at least one).
    print(
        f"\n{count} waiting executions (seeded in {seeded_s:.1f} s) woken by {calls} wake calls "
        f"(+1 finding none): {wall:.1f} s, {cpu:.1f} s CPU ({cpu * 1e3 / count:.2f} ms each), "
        f"{writes:.0f} documents written, {queries:.0f} queries returning {count} documents "
        f"(billed {count + 1} reads), {len(published.messages)} resumes published"
    )
    assert len(published.messages) == count


CACHED = TWO_CALLS.replace(
    "  second:\n    after: [first]",
    "  second:\n    cache: {key: '${input.user_id}', ttl: 1h}\n    after: [first]",
)


async def counted_costs(runs: int = 20) -> dict[str, tuple[float, float]]:
    """(reads, writes) per execution of a wake (FIRESTORE_EMULATOR_HOST's Firestore), and
    what a cache hit adds to an execution against the same flow without a cache."""
    runner, base = await stand_ins(0)
    flows_dir = Path(tempfile.mkdtemp())
    for name, text in (("two-calls", TWO_CALLS), ("with-sleep", WITH_SLEEP), ("cached", CACHED)):
        (flows_dir / f"{name}.yaml").write_text(text)
    flows = load_flows(flows_dir, {"BASE_URL": base})
    project = f"bench-{uuid.uuid4().hex[:8]}"
    costs: dict[str, tuple[float, float]] = {}
    async with on_firestore(project, flows, inline_wait_s=0) as (parts, store, counts):
        wakes = waker(store, published := Published())
        for _ in range(runs):
            assert await parts.push.handle(envelope("with-sleep", str(uuid.uuid4()))) == 204
        await asyncio.sleep(0.05)  # the 10 ms sleeps are due
        counts.rpcs.clear()
        while await wakes.wake():
            pass
        woken = len(published.messages)
        costs["wake"] = per(counts, woken, woken)[::-1]
        per_execution = {}
        assert await parts.push.handle(envelope("cached", str(uuid.uuid4()))) == 204  # kept
        for flow in ("two-calls", "cached"):
            counts.rpcs.clear()
            for _ in range(runs):
                assert await parts.push.handle(envelope(flow, str(uuid.uuid4()))) == 204
            per_execution[flow] = per(counts, runs)
        (plain_writes, plain_reads), (hit_writes, hit_reads) = per_execution.values()
        costs["cache hit"] = (hit_reads - plain_reads, hit_writes - plain_writes)
    await store.close()
    await runner.cleanup()
    return costs


async def main_async(args: argparse.Namespace) -> None:
    runner, base = await stand_ins(0)
    project = f"bench-{uuid.uuid4().hex[:8]}"
    flows_dir = Path(tempfile.mkdtemp())
    (flows_dir / "two-calls.yaml").write_text(TWO_CALLS)
    (flows_dir / "with-sleep.yaml").write_text(WITH_SLEEP)
    (flows_dir / "with-sleep-long.yaml").write_text(WITH_SLEEP.replace("10ms", "1h"))
    flows = load_flows(flows_dir, {"BASE_URL": base})
    async with on_firestore(project, flows, inline_wait_s=0) as (parts, store, counts):
        await cycle_costs(parts, store, counts, args.runs)
        await held(parts, args.held)
        await many(store, counts, args.many)
    await store.close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--many", type=int, default=10_000)
    args = parser.parse_args()
    on_emulator(main_async(args))


if __name__ == "__main__":
    main()

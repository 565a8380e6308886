"""Limits across instances: each instance's leased share, never more than the total together."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from service.backends.firestore import FirestoreStore
from service.backends.memory import MemoryStore
from service.backends.store import ExecutionStore
from service.dev.servers import serve
from service.dev.standins import StandIns
from service.engine.flow import check_limits, load_flow, load_flows
from service.engine.flow_spec import LimitSpec
from service.engine.outbound import http_clients
from service.engine.quotas import Quota, Quotas
from service.engine.step import Step
from service.errors import FlowError
from service.metrics import Metrics
from service.shares import Ask, Holder, Share, allot
from tests.support.engine import make_caller

# Asserts how long things take: run alone, after the parallel tier (scripts/test.sh).
pytestmark = pytest.mark.timing

LIMITED = """
steps:
  analyse:
    call: URL/analyse
    limit: {key: analysis, LIMIT}
    body: {user_id: u}
"""


def test_a_share_is_fair_never_past_the_total_and_keeps_what_is_in_flight() -> None:
    total = Share(concurrency=10, rate=100)
    alone = allot(total, {}, Share(4, 30), Share(), now=0)
    assert alone == Share(4, 30)  # what it asks, under the total
    others = {"b": Holder(demand=Share(20, 200), granted=Share(10, 100), expires_at=5)}
    assert allot(total, others, Share(20, 200), Share(), now=0) == Share(0, 0)  # none free
    assert allot(total, others, Share(20, 200), Share(), now=6) == Share(10, 100)  # b expired
    shrinking = {"b": Holder(demand=Share(20, 200), granted=Share(4, 40), expires_at=5)}
    assert allot(total, shrinking, Share(20, 200), Share(), now=0) == Share(5, 50)  # fair half
    assert allot(total, shrinking, Share(2, 10), Share(), now=0) == Share(2, 10)  # wants less
    keeps = allot(total, shrinking, Share(1, 0), Share(6, 0), now=0)
    assert keeps.concurrency == 6  # in flight: not taken away (and counted in its last share)
    four = {n: Holder(Share(3, 0), Share(1, 0), 5) for n in "bc"}
    assert allot(Share(3, 0), four, Share(3, 0), Share(), now=0) == Share(1, 0)  # 3 over 3: 1
    empty = {n: Holder(Share(3, 0), Share(1, 0), 5) for n in "bcd"}
    assert allot(Share(3, 0), empty, Share(3, 0), Share(), now=0) == Share(0, 0)
    # What the store keeps while the asker goes on under its old grant: the larger one.
    shrinks = Ask(total, demand=Share(1, 5), in_use=Share(), held=Share(4, 40))
    assert shrinks.kept(Share(1, 5)) == Share(4, 40) and not shrinks.lets_go
    assert Ask(total, Share(), Share(), Share()).lets_go


def test_one_key_with_two_sets_of_numbers_is_a_load_error(tmp_path: Path) -> None:
    flow = LIMITED.replace("URL", "https://x")
    for name, limit in (("a", "concurrency: 3"), ("b", "concurrency: 4")):
        (tmp_path / f"{name}.yaml").write_text(flow.replace("LIMIT", limit))
    with pytest.raises(FlowError, match=r"limit 'analysis': other numbers than a\.analyse's"):
        check_limits(load_flows(tmp_path, {}))
    (tmp_path / "b.yaml").write_text(flow.replace(", LIMIT", ""))
    with pytest.raises(FlowError, match="give concurrency, rate or both"):
        load_flows(tmp_path, {})


def limited_step(tmp_path: Path, url: str, limit: str) -> Step:
    path = tmp_path / "limited.yaml"
    path.write_text(LIMITED.replace("URL", url).replace("LIMIT", limit))
    return load_flow(path, {}).steps["analyse"]


async def calls(step: Step, quotas: Quotas, count: int, timeout_s: float = 30) -> list[str | None]:
    """`count` calls of `step` at once from one instance; each one's error."""
    async with http_clients() as (_, sender):
        caller = make_caller(sender, quotas=quotas)
        deadline = asyncio.get_running_loop().time() + timeout_s
        body = {"user_id": "u"}
        results = await asyncio.gather(*(caller.call(step, body, deadline) for _ in range(count)))
    return [result.error for result in results]


@pytest.fixture(params=["memory", pytest.param("firestore", marks=pytest.mark.emulator)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ExecutionStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    request.getfixturevalue("firestore_emulator")
    shared = FirestoreStore(f"test-{uuid.uuid4().hex[:8]}", "executions", timedelta(days=7))
    # The emulator's first transaction in a new project takes seconds: not the one measured.
    await shared.lease_share("warm-up", "test", Ask(Share(1, 0), Share(), Share(), Share()), 1.0)
    yield shared
    await shared.close()


async def test_two_instances_never_have_more_calls_in_flight_than_the_limit(
    store: ExecutionStore, tmp_path: Path
) -> None:
    """concurrency: 3 for two instances sharing the store, 15 calls at once from each,
    against a function that records the calls in flight."""
    functions = StandIns(delay_s=0.1)
    with serve(functions.app()) as url:
        step = limited_step(tmp_path, url, "concurrency: 3")
        one, two = (Quotas(store, Metrics(), refresh_s=0.3, lease_s=1.0) for _ in range(2))
        began = time.monotonic()
        errors = await asyncio.gather(calls(step, one, 15), calls(step, two, 15))
        took = time.monotonic() - began
        await one.close()
        await two.close()
    peak = functions.peak["/analyse"]
    print(f"\n30 calls, concurrency 3 over 2 instances: peak {peak}, {took:.1f} s")
    assert errors == [[None] * 15, [None] * 15]
    assert peak <= 3
    assert len(functions.called("/analyse")) == 30


async def test_a_rate_is_shared_too(store: ExecutionStore, tmp_path: Path) -> None:
    functions = StandIns()
    with serve(functions.app()) as url:
        step = limited_step(tmp_path, url, "rate: 20/s")
        one, two = (Quotas(store, Metrics(), refresh_s=0.3, lease_s=1.0) for _ in range(2))
        began = time.monotonic()
        errors = await asyncio.gather(calls(step, one, 20), calls(step, two, 20))
        took = time.monotonic() - began
        await one.close()
        await two.close()
    print(f"\n40 calls at 20/s over 2 instances: {took:.2f} s")
    assert errors == [[None] * 20, [None] * 20]
    assert took >= 0.9  # 40 calls at 20 a second, less a second's burst (20 in all)


async def test_a_dead_instance_s_share_returns_within_its_lease(
    store: ExecutionStore, tmp_path: Path
) -> None:
    """One instance holds the whole limit on calls that hang, then dies (its renewals stop,
    nothing is given back); the other gets the limit once that lease ends."""
    gate = threading.Event()
    functions = StandIns(gates={"/analyse": gate})
    with serve(functions.app()) as url:
        step = limited_step(tmp_path, url, "concurrency: 2")
        dying = Quotas(store, Metrics(), refresh_s=0.2, lease_s=1.0)
        hung = asyncio.create_task(calls(step, dying, 2))
        while len(functions.called("/analyse")) < 2:
            await asyncio.sleep(0.01)
        assert dying._task is not None
        dying._task.cancel()  # killed: no renewal, no release
        hung.cancel()
        died = time.monotonic()
        survivor = Quotas(store, Metrics(), refresh_s=0.2, lease_s=1.0)
        gate.set()
        assert await calls(step, survivor, 4) == [None] * 4
        waited = time.monotonic() - died
        await survivor.close()
    print(f"\nthe dead instance's share came back after {waited:.2f} s (lease 1 s)")
    assert 0.5 <= waited <= 3.0


class Slow:
    """A store whose limit leases take `latency_s` each way (the request, then the answer),
    as a far Firestore's do: grants land while calls go on."""

    def __init__(self, store: ExecutionStore, latency_s: float) -> None:
        self._store, self._latency_s = store, latency_s

    async def lease_share(self, *args: Any) -> Share:
        await asyncio.sleep(self._latency_s * random.uniform(0.5, 1.5))
        granted = await self._store.lease_share(*args)
        await asyncio.sleep(self._latency_s * random.uniform(0.5, 1.5))
        return granted


async def test_shares_never_add_up_past_the_limit_while_grants_move_under_calls(
    store: ExecutionStore,
) -> None:
    """concurrency: 3 across three instances, each in timed bursts of 1 to 6 calls that
    shift the demands (so grants grow and shrink while calls are in flight), renewing
    every 30 ms through a store 20 ms away each way: never 4 calls in flight at once."""
    spec = LimitSpec(key="bursts", concurrency=3)
    slow = Slow(store, latency_s=0.02)
    instances = [Quotas(slow, Metrics(), refresh_s=0.03, lease_s=2.0) for _ in range(3)]
    in_flight, peaks, calls_made = 0, [], 0
    random.seed(7)

    async def call(quota: Quota) -> None:
        nonlocal in_flight, calls_made
        async with quota.slot(asyncio.get_running_loop().time() + 30):
            in_flight += 1
            calls_made += 1
            peaks.append(in_flight)
            await asyncio.sleep(random.uniform(0.005, 0.04))
            in_flight -= 1

    async def bursts(quotas: Quotas) -> None:
        quota = quotas.of(spec)
        for _ in range(10):
            await asyncio.gather(*(call(quota) for _ in range(random.randint(1, 6))))
            await asyncio.sleep(random.uniform(0, 0.08))

    await asyncio.gather(*(bursts(quotas) for quotas in instances))
    for quotas in instances:
        await quotas.close()
    print(f"\n{calls_made} calls in bursts over 3 instances: peak {max(peaks)} (limit 3)")
    assert calls_made >= 30
    assert max(peaks) <= 3

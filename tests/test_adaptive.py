"""Adaptive concurrency: each instance backs off a function that answers 429 or 503."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path

from service.dev.servers import serve
from service.dev.standins import StandIns
from service.engine.adaptive import AdaptiveLimit
from service.engine.calls import MLCaller
from service.engine.flow import load_flow
from service.engine.outbound import http_clients
from service.engine.outbound_auth import NoTokens
from service.engine.runner import FlowRunner
from service.execution import Execution, ExecutionStatus

FAN_OUT = """
input:
  items: {type: array, required: true}
steps:
  analyse:
    call: URL/analyse
    for_each: ${input.items}
    max_concurrency: 16
    body: {user_id: u, n: "${item}"}
"""


async def test_an_overloaded_answer_halves_the_calls_in_flight_once_per_round() -> None:
    limit = AdaptiveLimit("fn.example", bound=100)
    async with AsyncExitStack() as held:
        rounds = [await held.enter_async_context(limit.slot()) for _ in range(16)]
        for started in rounds[:12]:  # twelve of the sixteen answered 429
            limit.overloaded(started, retry_after=None)
        assert limit.limit == 8  # (16 in flight) / 2, once for the whole round
        limit.overloaded(limit._round, retry_after=None)  # a call of the new round
        assert limit.limit == 4  # from the limit, not from the 16 still in flight
    for _ in range(3):
        limit.succeeded()
    assert limit.limit == 4  # under the level refused (8), about one more per round...
    limit.succeeded()
    assert limit.limit == 5
    for _ in range(12):
        limit.succeeded()
    assert limit.limit == 7  # ...and ten times slower near it
    async with AsyncExitStack() as held:
        started = [await held.enter_async_context(limit.slot()) for _ in range(6)]
        limit.overloaded(started[0], None)
    assert limit.limit == 3  # (6 in flight + this one) / 2
    for _ in range(10):
        limit.overloaded(limit._round, None)
    assert limit.limit == 1  # never below one
    for _ in range(100_000):
        limit.succeeded()
    assert limit.limit == 100  # never above the bound


async def test_calls_beyond_the_limit_wait_and_a_cancelled_waiter_gives_nothing_away() -> None:
    limit = AdaptiveLimit("fn.example", bound=2)
    entered: list[int] = []

    async def call(n: int, hold: asyncio.Event) -> None:
        async with limit.slot():
            entered.append(n)
            await hold.wait()

    hold = asyncio.Event()
    tasks = [asyncio.create_task(call(n, hold)) for n in range(4)]
    await asyncio.sleep(0.01)
    assert entered == [0, 1] and limit.waiting == 2
    tasks[2].cancel()
    await asyncio.sleep(0.01)
    assert limit.waiting == 1
    hold.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert entered == [0, 1, 3] and limit._in_flight == 0


async def test_a_retry_after_pauses_new_calls() -> None:
    limit = AdaptiveLimit("fn.example", bound=4)
    async with limit.slot() as started:
        pass
    limit.overloaded(started, retry_after=0.2)
    began = time.monotonic()
    async with limit.slot():
        waited = time.monotonic() - began
    assert waited >= 0.19


async def test_a_fan_out_at_four_times_a_function_s_capacity_succeeds(tmp_path: Path) -> None:
    """The issue's case: 200 items, 16 at a time, a function that takes 4 at once and
    answers 429 beyond: the execution succeeds and few calls are refused."""
    functions = StandIns(delay_s=0.02, capacity={"/analyse": 4})
    with serve(functions.app()) as url:
        path = tmp_path / "fan-out.yaml"
        path.write_text(FAN_OUT.replace("URL", url))
        flow = load_flow(path, {})
        execution = Execution(
            execution_id="e",
            flow=flow.name,
            status=ExecutionStatus.RUNNING,
            input={"items": list(range(200))},
        )
        async with http_clients() as (_, sender):
            runner = FlowRunner(MLCaller(sender, NoTokens()), timeout_s=120)
            began = time.monotonic()
            await runner.run(flow, execution)
            took = time.monotonic() - began
    calls = len(functions.called("/analyse"))
    refused = functions.refused["/analyse"]
    print(f"\n200 items, capacity 4: {calls} calls, {refused} refused (429), {took:.1f} s")
    assert execution.status == ExecutionStatus.SUCCEEDED, execution.error
    assert functions.peak["/analyse"] <= 4
    # 15 % of the items at most (17 here, most in the first round); without adapting,
    # 52-55 of ~245 calls were refused and items failed (bench.protection)
    assert refused <= 30

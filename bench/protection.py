"""`python -m bench.protection`: what protecting and saving ML calls costs and gives.

1. A fan-out of --items calls, 16 at a time, against a function that takes 4 at once
   and answers 429 beyond: with adaptive concurrency, and without (the limit never
   adapts, as before): calls made, share refused, time to finish, the outcome.
2. A limit (`limit: {key, concurrency}`) on --calls calls: CPU per call with and without
   it (the engine's thread), and the store writes its shares cost per instance per second.
3. A cached step: CPU and time of a hit against a call.

The stand-in functions run in another thread: CPU is the engine's thread's
(time.thread_time). With --firestore, limits and cache use the Firestore emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.storage import on_emulator
from service.backends.memory import MemoryStore
from service.backends.store import ExecutionStore
from service.dev.servers import serve
from service.dev.standins import StandIns
from service.engine import adaptive
from service.engine.caching import StepCache
from service.engine.calls import MLCaller
from service.engine.flow import Flow, load_flow
from service.engine.kinds.base import NoChildren, Tools
from service.engine.outbound import Sender, http_clients
from service.engine.outbound_auth import NoTokens
from service.engine.quotas import REFRESH_S, Quotas
from service.engine.runner import FlowRunner
from service.engine.shadows import Shadows
from service.execution import Execution, ExecutionStatus
from service.logs import configure_logging
from service.metrics import Metrics
from service.telemetry import Tracing

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
ONE_CALL = """
input:
  user_id: {type: string, required: true}
steps:
  embed:
    call: URL/create-user-embeddings
    EXTRA
    body: {user_id: "${input.user_id}"}
"""


def flow_of(text: str, url: str, extra: str = "") -> Flow:
    path = Path(tempfile.mkdtemp()) / "bench.yaml"
    path.write_text(text.replace("URL", url).replace("EXTRA", extra or "timeout_s: 60"))
    return load_flow(path, {})


def execution(flow: Flow, **flow_input: Any) -> Execution:
    return Execution(
        execution_id=str(uuid.uuid4()),
        flow=flow.name,
        status=ExecutionStatus.RUNNING,
        input=flow_input,
    )


async def adaptation(items: int) -> None:
    print(f"{items} items, 16 at a time, a function that takes 4 at once (20 ms a call):")
    for name, adapts in (("adaptive", True), ("fixed (before)", False)):
        functions = StandIns(delay_s=0.02, capacity={"/analyse": 4})
        with serve(functions.app()) as url:
            flow = flow_of(FAN_OUT, url)
            run = execution(flow, items=list(range(items)))
            original = adaptive.AdaptiveLimit.overloaded
            if not adapts:
                adaptive.AdaptiveLimit.overloaded = lambda self, started: None  # type: ignore[method-assign]
            try:
                async with http_clients() as (_, sender):
                    runner = runner_of(sender, timeout_s=300)
                    began = time.monotonic()
                    await runner.run(flow, run)
                    took = time.monotonic() - began
            finally:
                adaptive.AdaptiveLimit.overloaded = original  # type: ignore[method-assign]
        calls = len(functions.called("/analyse"))
        refused = functions.refused["/analyse"]
        print(
            f"  {name:<16} {calls:>5} calls, {refused:>4} refused ({refused / calls:5.1%}), "
            f"{took:5.1f} s, {run.status.value}"
        )


def runner_of(
    sender: Sender,
    timeout_s: float,
    quotas: Quotas | None = None,
    cache: StepCache | None = None,
) -> FlowRunner:
    """A runner of this process: no tokens, no exporter; limits and cache in memory
    unless given."""
    metrics, tracing = Metrics(), Tracing()
    caller = MLCaller(
        sender,
        id_tokens=NoTokens(),
        access_tokens=NoTokens(),
        quotas=quotas or Quotas(MemoryStore(), metrics),
        tracing=tracing,
        metrics=metrics,
    )
    return FlowRunner(
        tools=Tools(
            caller,
            cache or StepCache(MemoryStore(), metrics),
            NoChildren(),
            Shadows(caller, metrics),
        ),
        timeout_s=timeout_s,
        tracing=tracing,
        metrics=metrics,
    )


async def cpu_per_call(
    flow: Flow, count: int, quotas: Quotas | None = None, cache: StepCache | None = None
) -> tuple[float, float]:
    """CPU (engine thread) and wall ms per execution of `flow`, `count` one after another."""
    async with http_clients() as (_, sender):
        runner = runner_of(sender, 60, quotas, cache)
        await runner.run(flow, execution(flow, user_id="warm-up"))
        cpu, wall = time.thread_time(), time.perf_counter()
        for n in range(count):
            done = await runner.run(flow, execution(flow, user_id=f"u{n % 10}"))
            assert done.status == ExecutionStatus.SUCCEEDED, done.error
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return cpu * 1000 / count, wall * 1000 / count


class CountedStore:
    """The store with its share leases counted."""

    def __init__(self, store: ExecutionStore) -> None:
        self.store = store
        self.leases = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def lease_share(self, *args: Any) -> Any:
        self.leases += 1
        return await self.store.lease_share(*args)


async def limit_and_cache(calls: int, store: ExecutionStore) -> None:
    functions = StandIns()
    with serve(functions.app()) as url:
        plain = flow_of(ONE_CALL, url)
        limited = flow_of(ONE_CALL, url, "limit: {key: bench, concurrency: 20, rate: 10000/s}")
        cached = flow_of(ONE_CALL, url, 'cache: {key: "${input.user_id}", ttl: 1h}')
        counted = CountedStore(store)
        quotas = Quotas(counted, Metrics())
        plain_cpu, plain_ms = await cpu_per_call(plain, calls)
        began = time.monotonic()
        limit_cpu, limit_ms = await cpu_per_call(limited, calls, quotas)
        seconds = time.monotonic() - began
        await quotas.close()
        cache = StepCache(store, Metrics())
        hit_cpu, hit_ms = await cpu_per_call(cached, calls, cache=cache)
    print(f"\n{calls} executions of one call each, one after another ({type(store).__name__}):")
    print(f"  {'a call':<34} {plain_cpu:6.2f} ms CPU {plain_ms:6.2f} ms wall")
    print(
        f"  {'a call under a limit':<34} {limit_cpu:6.2f} ms CPU {limit_ms:6.2f} ms wall "
        f"(+{limit_cpu - plain_cpu:.2f} ms CPU a call; {counted.leases} share leases in "
        f"{seconds:.1f} s, the release included: one every {REFRESH_S:g} s while in use)"
    )
    print(
        f"  {'a cache hit (10 keys, all kept)':<34} {hit_cpu:6.2f} ms CPU {hit_ms:6.2f} ms wall "
        f"({hit_cpu / plain_cpu:.2f}x the call's CPU, {hit_ms / plain_ms:.2f}x its time)"
    )


async def main_async(args: argparse.Namespace) -> None:
    configure_logging("console", level=40)  # errors only: the 429s are the point here
    await adaptation(args.items)
    store: ExecutionStore = MemoryStore()
    if args.firestore:
        from service.backends.firestore import FirestoreStore

        store = FirestoreStore(f"bench-{uuid.uuid4().hex[:8]}", "executions", timedelta(days=7))
    await limit_and_cache(args.calls, store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--firestore", action="store_true", help="on the Firestore emulator")
    args = parser.parse_args()
    if args.firestore:
        on_emulator(main_async(args))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

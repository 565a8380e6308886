"""The step cache: answers reused across executions, per item, once per key at a time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.backends.memory import MemoryStore
from service.backends.store import ExecutionStore
from service.dev.servers import serve
from service.dev.standins import StandIns
from service.engine.caching import StepCache
from service.engine.flow import Flow, load_flow
from service.engine.outbound import http_clients
from service.execution import Execution, ExecutionStatus
from service.metrics import Metrics
from tests.support.engine import make_caller, make_runner

CACHED = """
input:
  user_id: {type: string, required: true}
  items: {type: array, default: []}
steps:
  embed:
    call: URL/create-user-embeddings
    cache: {key: "${input.user_id}", ttl: TTL}
    body: {user_id: "${input.user_id}"}
    output: {user: "${response.user_id}", mine: "${input.user_id}"}
  per_item:
    call: URL/analyse
    for_each: ${input.items}
    cache: {key: "${item}", ttl: TTL}
    body: {user_id: "${input.user_id}", item: "${item}"}
"""


@pytest.fixture
def functions() -> Iterator[tuple[StandIns, str]]:
    stand_ins = StandIns(delay_s=0.2)
    with serve(stand_ins.app()) as url:
        yield stand_ins, url


def cached_flow(tmp_path: Path, url: str, ttl: str = "1h") -> Flow:
    path = tmp_path / "cached.yaml"
    path.write_text(CACHED.replace("URL", url).replace("TTL", ttl))
    return load_flow(path, {})


async def run(flow: Flow, cache: StepCache, metrics: Metrics, **flow_input: Any) -> Execution:
    """One execution, with the cache one instance shares between its executions."""
    execution = Execution(
        execution_id=str(uuid.uuid4()),
        flow=flow.name,
        status=ExecutionStatus.RUNNING,
        input={"user_id": "u1", **flow_input},
    )
    async with http_clients() as (_, sender):
        runner = make_runner(make_caller(sender), 30, metrics=metrics, cache=cache)
        return await runner.run(flow, execution)


async def test_a_cached_answer_is_reused_across_executions_until_its_ttl(
    functions: tuple[StandIns, str], tmp_path: Path
) -> None:
    stand_ins, url = functions
    flow = cached_flow(tmp_path, url, ttl="1s")
    metrics = Metrics()
    cache = StepCache(MemoryStore(), metrics)
    first = await run(flow, cache, metrics)
    second = await run(flow, cache, metrics)
    other_user = await run(flow, cache, metrics, user_id="u2")
    assert len(stand_ins.called("/create-user-embeddings")) == 2  # u1 once, u2 once
    made, reused = first.steps["embed"], second.steps["embed"]
    assert (made.cached, made.cached_from, made.attempts) == (False, None, 1)
    assert (reused.cached, reused.cached_from, reused.attempts) == (True, first.execution_id, 0)
    assert reused.output == made.output == {"user": "u1", "mine": "u1"}  # shaped per use
    assert other_user.steps["embed"].output == {"user": "u2", "mine": "u2"}
    await asyncio.sleep(1.1)
    expired = await run(flow, cache, metrics)
    assert not expired.steps["embed"].cached
    assert len(stand_ins.called("/create-user-embeddings")) == 3
    text = metrics.text().decode()
    assert 'orchestrator_cache_total{flow="cached",outcome="hit",step="embed"} 1.0' in text
    assert 'orchestrator_cache_total{flow="cached",outcome="miss",step="embed"} 3.0' in text


async def test_overlapping_misses_of_one_key_make_one_call(
    functions: tuple[StandIns, str], tmp_path: Path
) -> None:
    """Five executions at once, and a for_each whose items repeat: one call per key."""
    stand_ins, url = functions
    flow = cached_flow(tmp_path, url)
    metrics = Metrics()
    cache = StepCache(MemoryStore(), metrics)
    executions = await asyncio.gather(*(run(flow, cache, metrics) for _ in range(5)))
    assert len(stand_ins.called("/create-user-embeddings")) == 1
    makers = [e for e in executions if not e.steps["embed"].cached]
    assert len(makers) == 1
    assert {e.steps["embed"].cached_from for e in executions} == {None, makers[0].execution_id}

    fanned = await run(flow, cache, metrics, items=["a", "b", "a", "a"])
    items = fanned.steps["per_item"].items or []
    assert sorted(call.body["item"] for call in stand_ins.called("/analyse")) == ["a", "b"]
    assert [item.cached for item in items].count(False) == 2
    again = await run(flow, cache, metrics, items=["b"])
    assert again.steps["per_item"].items[0].cached  # type: ignore[index]
    assert len(stand_ins.called("/analyse")) == 2


async def test_a_failed_call_is_not_kept(functions: tuple[StandIns, str], tmp_path: Path) -> None:
    stand_ins, url = functions
    flow = cached_flow(tmp_path, url)
    stand_ins.script["/create-user-embeddings"] = [400]
    metrics = Metrics()
    cache = StepCache(MemoryStore(), metrics)
    failed = await run(flow, cache, metrics)
    assert failed.steps["embed"].status == "failed"
    succeeded = await run(flow, cache, metrics)
    assert succeeded.steps["embed"].status == "succeeded" and not succeeded.steps["embed"].cached


UNSHAPED = """
input:
  user_id: {type: string, required: true}
steps:
  embed:
    call: URL/create-user-embeddings
    cache: {key: "${input.user_id}", ttl: 1h}
    body: {user_id: "${input.user_id}"}
    output: ${response.user_id + 1}  # a string plus a number: no output
"""


async def test_an_answer_whose_output_cannot_be_made_is_not_kept(
    functions: tuple[StandIns, str], store: ExecutionStore, tmp_path: Path
) -> None:
    """A 200 that `output:` cannot shape fails the step; kept, it failed every execution of
    the key for the whole ttl with no call. It is not kept: each execution calls."""
    stand_ins, url = functions
    path = tmp_path / "unshaped.yaml"
    path.write_text(UNSHAPED.replace("URL", url))
    flow = load_flow(path, {})
    metrics = Metrics()
    cache = StepCache(store, metrics)
    first, second = [await run(flow, cache, metrics) for _ in range(2)]
    for execution in (first, second):
        step = execution.steps["embed"]
        assert step.status == "failed" and step.error, step
        assert (step.cached, step.attempts) == (False, 1)
    assert len(stand_ins.called("/create-user-embeddings")) == 2


def test_a_cache_on_a_step_that_waits_is_a_load_error(tmp_path: Path) -> None:
    from service.errors import FlowError

    path = tmp_path / "f.yaml"
    path.write_text("steps:\n  s:\n    sleep: 1s\n    cache: {key: x, ttl: 1h}\n")
    with pytest.raises(FlowError, match="cache: a step that waits is not cached"):
        load_flow(path, {})

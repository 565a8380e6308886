"""Variants: each call to the URL its key's hash picks, sticky, recorded, counted, and
cached within its variant only; checked when the flow loads."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.backends.memory import MemoryStore
from service.dev.servers import serve
from service.dev.standins import StandIns
from service.engine.caching import StepCache
from service.engine.flow import Flow, FlowError, load_flow
from service.engine.outbound import http_clients
from service.execution import Execution, ExecutionStatus
from service.metrics import Metrics
from tests.support.engine import make_caller, make_runner

ANALYSIS = "/match-analysis-user-vacancy"

CANARY = """
input:
  user_id: {type: string, required: true}
  vacancies: {type: array, default: []}
steps:
  analyse:
    call: PRIMARY/match-analysis-user-vacancy
    variants:
      - {name: v2, call: CANDIDATE/match-analysis-user-vacancy, weight: 30%}
    variant_key: ${input.user_id}
    body: {user_id: "${input.user_id}", vacancy_id: v1}EXTRA
  each:
    call: PRIMARY/match-analysis-user-vacancy
    for_each: ${input.vacancies}
    variants:
      - {name: v2, call: CANDIDATE/match-analysis-user-vacancy, weight: 50%}
    variant_key: ${item}
    body: {user_id: "${input.user_id}", vacancy_id: "${item}"}
"""


@pytest.fixture
def sides() -> Iterator[tuple[StandIns, StandIns, str, str]]:
    primary, candidate = StandIns(), StandIns()
    with serve(primary.app()) as primary_url, serve(candidate.app()) as candidate_url:
        yield primary, candidate, primary_url, candidate_url


def canary(tmp_path: Path, primary: str, candidate: str, extra: str = "") -> Flow:
    path = tmp_path / f"canary-{uuid.uuid4().hex[:6]}.yaml"
    text = CANARY.replace("PRIMARY", primary).replace("CANDIDATE", candidate)
    path.write_text(text.replace("EXTRA", extra))
    return load_flow(path, {})


async def run(
    flow: Flow, metrics: Metrics, cache: StepCache | None = None, **given: Any
) -> Execution:
    execution = Execution(
        execution_id=str(uuid.uuid4()),
        flow=flow.name,
        status=ExecutionStatus.RUNNING,
        input=given,
    )
    async with http_clients() as (_, sender):
        runner = make_runner(make_caller(sender, metrics=metrics), 30, metrics=metrics, cache=cache)
        return await runner.run(flow, execution)


async def test_calls_stick_to_the_variant_their_key_picks_and_record_it(
    sides: tuple[StandIns, StandIns, str, str], tmp_path: Path
) -> None:
    primary, candidate, primary_url, candidate_url = sides
    flow = canary(tmp_path, primary_url, candidate_url)
    metrics = Metrics()
    users = [f"user-{n}" for n in range(20)]
    seen: dict[str, set[str]] = {}
    for user in users * 2:  # 40 executions: each user twice
        done = await run(flow, metrics, user_id=user)
        assert done.status == ExecutionStatus.SUCCEEDED, done.error
        seen.setdefault(user, set()).add(done.steps["analyse"].variant or "none")
    assert all(len(variants) == 1 for variants in seen.values())  # sticky per key
    chosen = {user: variants.pop() for user, variants in seen.items()}
    assert set(chosen.values()) == {"primary", "v2"}  # both used
    to_candidate = [call.body["user_id"] for call in candidate.called(ANALYSIS)]
    assert sorted(to_candidate) == sorted(u for u in users * 2 if chosen[u] == "v2")
    assert len(primary.called(ANALYSIS)) == 40 - len(to_candidate)
    text = metrics.text().decode()
    assert 'outcome="success",variant="v2"' in text and 'variant="primary"' in text


async def test_each_item_picks_its_variant_by_its_own_key(
    sides: tuple[StandIns, StandIns, str, str], tmp_path: Path
) -> None:
    _, candidate, primary_url, candidate_url = sides
    flow = canary(tmp_path, primary_url, candidate_url)
    vacancies = [f"v{n}" for n in range(12)]
    first = await run(flow, Metrics(), user_id="u", vacancies=vacancies)
    again = await run(flow, Metrics(), user_id="someone else", vacancies=vacancies)
    items = [item.variant for item in first.steps["each"].items or []]
    assert items == [item.variant for item in again.steps["each"].items or []]
    assert set(items) == {"primary", "v2"}
    to_candidate = {call.body["vacancy_id"] for call in candidate.called(ANALYSIS)}
    assert {v for v, name in zip(vacancies, items, strict=True) if name == "v2"} <= to_candidate


async def test_a_cached_answer_is_reused_within_its_variant_only(
    sides: tuple[StandIns, StandIns, str, str], tmp_path: Path
) -> None:
    primary, candidate, primary_url, candidate_url = sides
    extra = '\n    cache: {key: "same for everyone", ttl: 1h}'
    flow = canary(tmp_path, primary_url, candidate_url, extra)
    metrics = Metrics()
    cache = StepCache(MemoryStore(), metrics)
    runs = [await run(flow, metrics, cache, user_id=f"user-{n}") for n in range(20)]
    by_variant: dict[str | None, list[Execution]] = {}
    for done in runs:
        by_variant.setdefault(done.steps["analyse"].variant, []).append(done)
    assert set(by_variant) == {"primary", "v2"}
    assert len(primary.called(ANALYSIS)) == 1 and len(candidate.called(ANALYSIS)) == 1
    for variant, executions in by_variant.items():
        made = [e for e in executions if not e.steps["analyse"].cached]
        assert len(made) == 1, variant  # the first of each variant called, the rest reused


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("weight: 30%}", "weight: 130%}"),
        ("name: v2,", "name: primary,"),
    ],
)
def test_a_bad_variant_is_a_load_error_naming_its_field(
    tmp_path: Path, change: str, error: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        CANARY.replace("PRIMARY", "http://a")
        .replace("CANDIDATE", "http://b")
        .replace("EXTRA", "")
        .replace(change, error)
    )
    with pytest.raises(FlowError) as refused:
        load_flow(path, {})
    assert "variants" in str(refused.value)


def test_weights_past_all_the_calls_and_a_key_without_variants_are_load_errors(
    tmp_path: Path,
) -> None:
    text = (
        CANARY.replace("PRIMARY", "http://a").replace("CANDIDATE", "http://b").replace("EXTRA", "")
    )
    over = text.replace(
        "weight: 30%}", "weight: 60%}\n      - {name: v3, call: http://c/x, weight: 50%}"
    )
    path = tmp_path / "over.yaml"
    path.write_text(over)
    with pytest.raises(FlowError, match="add up to 110%"):
        load_flow(path, {})
    lonely = tmp_path / "lonely.yaml"
    lonely.write_text("steps:\n  one:\n    call: http://a/x\n    variant_key: ${input.user_id}\n")
    with pytest.raises(FlowError, match="variant_key: only a step with variants"):
        load_flow(lonely, {})

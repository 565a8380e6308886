"""Shadow calls: the candidate gets a copy of each call made, its answer is judged and
counted, never used; sampled by execution; checked when the flow loads."""

from __future__ import annotations

import asyncio
import threading
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
from service.execution import Execution, ExecutionStatus, ShadowResult, StepStatus
from service.metrics import Metrics
from tests.support.engine import make_caller, make_runner

MATCH = "/match-candidato"
ANALYSIS = "/match-analysis-user-vacancy"

SHADOWED = """
input:
  user_id: {type: string, required: true}
  vacancies: {type: array, default: [v1, v2]}
steps:
  match:
    call: PRIMARY/match-candidato
    body: {user_id: "${input.user_id}"}
    shadow: {call: CANDIDATE/match-candidatoSHADOW}EXTRA
  analyse:
    call: PRIMARY/match-analysis-user-vacancy
    for_each: ${input.vacancies}
    body: {user_id: "${input.user_id}", vacancy_id: "${item}"}
    shadow: {call: CANDIDATE/match-analysis-user-vacancy}
"""


@pytest.fixture
def sides() -> Iterator[tuple[StandIns, StandIns, str, str]]:
    primary, candidate = StandIns(), StandIns()
    with serve(primary.app()) as primary_url, serve(candidate.app()) as candidate_url:
        yield primary, candidate, primary_url, candidate_url


def shadowed(
    tmp_path: Path, primary: str, candidate: str, shadow: str = "", extra: str = ""
) -> Flow:
    path = tmp_path / f"shadowed-{uuid.uuid4().hex[:6]}.yaml"
    text = SHADOWED.replace("PRIMARY", primary).replace("CANDIDATE", candidate)
    path.write_text(text.replace("SHADOW", shadow).replace("EXTRA", extra))
    return load_flow(path, {})


async def run(
    flow: Flow, metrics: Metrics, cache: StepCache | None = None, **given: Any
) -> tuple[Execution, dict[str, ShadowResult]]:
    """The execution as it ended, and its shadows' outcomes once they have answered."""
    execution = Execution(
        execution_id=str(uuid.uuid4()),
        flow=flow.name,
        status=ExecutionStatus.RUNNING,
        input={"user_id": "u1", **given},
    )
    async with http_clients() as (_, sender):
        runner = make_runner(make_caller(sender, metrics=metrics), 30, metrics=metrics, cache=cache)
        done = await runner.run(flow, execution)
        return done, await runner.shadows.settled(done.execution_id)


def counted(metrics: Metrics, step: str, outcome: str) -> float:
    text = metrics.text().decode()
    for line in text.splitlines():
        labels = f'step="{step}"' in line and f'outcome="{outcome}"' in line
        if line.startswith("orchestrator_shadow_total{") and labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_shadow_that_answers_the_same_agrees_and_one_that_does_not_disagrees(
    sides: tuple[StandIns, StandIns, str, str], tmp_path: Path
) -> None:
    primary, candidate, primary_url, candidate_url = sides
    flow = shadowed(tmp_path, primary_url, candidate_url)
    metrics = Metrics()
    done, shadows = await run(flow, metrics)
    assert done.status == ExecutionStatus.SUCCEEDED, done.error
    assert set(shadows) == {"match", "analyse#0", "analyse#1"}
    assert shadows["match"].agree is True and shadows["match"].status == StepStatus.SUCCEEDED
    assert shadows["match"].output == done.steps["match"].output
    assert [c.body for c in candidate.called(MATCH)] == [c.body for c in primary.called(MATCH)]
    assert counted(metrics, "match", "agree") == 1 and counted(metrics, "analyse", "agree") == 2

    candidate.vacancies = 4  # the candidate ranks one vacancy more
    candidate.extra[ANALYSIS] = {"explanation": "new in v2"}
    done, shadows = await run(flow, metrics)
    assert done.steps["match"].output == {"vacancies": primary_ranked(3)}  # the primary's
    assert shadows["match"].agree is False
    assert shadows["match"].output == {"vacancies": primary_ranked(4)}
    assert [shadows[f"analyse#{i}"].agree for i in (0, 1)] == [False, False]
    assert (
        counted(metrics, "match", "disagree") == 1 and counted(metrics, "analyse", "disagree") == 2
    )
    assert "orchestrator_shadow_duration_seconds_count" in metrics.text().decode()
    assert 'side="primary"' in metrics.text().decode()


def primary_ranked(vacancies: int) -> list[dict[str, Any]]:
    return [{"vacancy_id": f"v{n}", "score": round(1 - n / 10, 2)} for n in range(1, vacancies + 1)]


async def test_compare_decides_whether_the_answers_agree(
    sides: tuple[StandIns, StandIns, str, str], tmp_path: Path
) -> None:
    _, candidate, primary_url, candidate_url = sides
    top = ", compare: '${shadow.vacancies[0].vacancy_id == response.vacancies[0].vacancy_id}'"
    flow = shadowed(tmp_path, primary_url, candidate_url, shadow=top)
    candidate.vacancies = 4  # different answers, the same top vacancy
    metrics = Metrics()
    _, shadows = await run(flow, metrics)
    assert shadows["match"].agree is True
    assert counted(metrics, "match", "agree") == 1


async def test_a_failing_shadow_fails_nothing_and_counts_as_an_error(
    sides: tuple[StandIns, StandIns, str, str], tmp_path: Path
) -> None:
    _, candidate, primary_url, candidate_url = sides
    flow = shadowed(tmp_path, primary_url, candidate_url)
    candidate.script[MATCH] = [500] * 10
    metrics = Metrics()
    done, shadows = await run(flow, metrics)
    assert done.status == ExecutionStatus.SUCCEEDED
    assert done.steps["match"].attempts == 1 and done.steps["match"].error is None
    assert shadows["match"].status == StepStatus.FAILED
    assert shadows["match"].error is not None and "HTTP 500" in shadows["match"].error
    assert shadows["match"].agree is None
    assert counted(metrics, "match", "error") == 1


async def test_only_the_sampled_executions_are_shadowed_and_cached_answers_never(
    sides: tuple[StandIns, StandIns, str, str], tmp_path: Path
) -> None:
    _, candidate, primary_url, candidate_url = sides
    flow = shadowed(tmp_path, primary_url, candidate_url, shadow=", sample: 50%")
    metrics = Metrics()
    sampled = [bool((await run(flow, metrics))[1].get("match")) for _ in range(40)]
    assert 8 <= sum(sampled) <= 32  # about half, chosen by execution id
    assert len(candidate.called(MATCH)) == sum(sampled)

    cached = shadowed(
        tmp_path, primary_url, candidate_url, extra='\n    cache: {key: "all", ttl: 1h}'
    )
    cache = StepCache(MemoryStore(), Metrics())
    before = len(candidate.called(MATCH))
    runs = [await run(cached, Metrics(), cache) for _ in range(3)]
    assert [done.steps["match"].cached for done, _ in runs] == [False, True, True]
    assert [("match" in shadows) for _, shadows in runs] == [True, False, False]
    assert len(candidate.called(MATCH)) == before + 1


@pytest.mark.parametrize(
    ("shadow", "error"),
    [
        ("{call: not-a-url}", "shadow.call"),
        ("{call: 'http://b/x', sample: 0%}", "sample"),
        ("{call: 'http://b/x', compare: '${size(shadow)}'}", "shadow.compare"),
        ("{call: 'http://b/x', timeout_s: 0}", "timeout_s"),
    ],
)
def test_a_bad_shadow_is_a_load_error_naming_its_field(
    tmp_path: Path, shadow: str, error: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"steps:\n  one:\n    call: http://a/x\n    shadow: {shadow}\n")
    with pytest.raises(FlowError, match=error):
        load_flow(path, {})
    asleep = tmp_path / "asleep.yaml"
    asleep.write_text("steps:\n  nap:\n    sleep: 1s\n    shadow: {call: 'http://b/x'}\n")
    with pytest.raises(FlowError, match="shadow"):
        load_flow(asleep, {})


async def test_a_stopping_instance_waits_for_no_shadow(
    sides: tuple[StandIns, StandIns, str, str], tmp_path: Path
) -> None:
    _, candidate, primary_url, candidate_url = sides
    flow = shadowed(tmp_path, primary_url, candidate_url, shadow=", timeout_s: 60")
    gate = candidate.gates[MATCH] = threading.Event()  # the candidate never answers
    execution = Execution(
        execution_id="stopping", flow=flow.name, status=ExecutionStatus.RUNNING, input={}
    )
    execution.input = {"user_id": "u1", "vacancies": []}
    try:
        async with http_clients() as (_, sender):
            runner = make_runner(make_caller(sender), 30)
            done = await runner.run(flow, execution)
            assert done.status == ExecutionStatus.SUCCEEDED
            settling = asyncio.create_task(runner.shadows.settled("stopping"))
            await asyncio.sleep(0.2)
            assert not settling.done()  # it waits for the candidate, up to 60 s
            runner.shadows.stop()
            async with asyncio.timeout(5):
                assert await settling == {}
    finally:
        gate.set()

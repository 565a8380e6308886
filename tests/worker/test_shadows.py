"""Shadow calls through the service, on each store: the result goes out without waiting
for the candidate, whose outcome shows on the execution once it answers, however large;
a re-drive keeps the shadows of the steps it keeps."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from service.backends.store import ExecutionStore
from service.dev.servers import serve
from service.dev.standins import StandIns
from service.execution import (
    Execution,
    ExecutionStatus,
    ItemResult,
    ShadowResult,
    StepResult,
    StepStatus,
)
from tests.support.waits import until
from tests.worker.test_waits import running

MATCH = "/match-candidato"

FLOW = """
input:
  user_id: {type: string, required: true}
steps:
  match:
    call: ${env.DEFAULT_MATCH_CANDIDATO_URL}
    body: {user_id: "${input.user_id}"}
    shadow: {call: CANDIDATE/match-candidato, timeout_s: 20}
"""


def test_a_held_shadow_neither_delays_the_result_nor_changes_it_and_shows_once_it_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: ExecutionStore
) -> None:
    candidate = StandIns(vacancies=5)
    gate = candidate.gates[MATCH] = threading.Event()
    with (
        serve(candidate.app()) as candidate_url,
        running(
            monkeypatch,
            tmp_path,
            {"shadowed": FLOW.replace("CANDIDATE", candidate_url)},
            store=store,
        ) as stack,
    ):
        execution_id = stack.start("shadowed")
        until(lambda: stack.delivered(execution_id), 10, "not delivered while the shadow is held")
        assert candidate.called(MATCH) and not gate.is_set()  # asked, not answered yet
        [delivered] = stack.delivered(execution_id)
        assert delivered["status"] == "succeeded"
        assert len(delivered["steps"]["match"]["output"]["vacancies"]) == 3  # the primary's
        assert delivered["steps"]["match"]["shadow"] is None
        gate.set()

        def recorded() -> bool:
            match = stack.document(execution_id)["steps"].get("match") or {}
            return match.get("shadow") is not None

        until(recorded, 10, "the shadow's outcome was not recorded")
        shadow = stack.document(execution_id)["steps"]["match"]["shadow"]
        assert shadow["status"] == "succeeded" and shadow["agree"] is False
        assert len(shadow["output"]["vacancies"]) == 5
        metrics = stack.client.get("/metrics").text
        assert 'orchestrator_shadow_total{flow="shadowed",outcome="disagree",step="match"} 1.0' in (
            metrics
        )


def test_a_shadow_answer_past_a_firestore_document_is_stored_like_any_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: ExecutionStore
) -> None:
    candidate = StandIns(padding={MATCH: 1_300_000})
    with (
        serve(candidate.app()) as candidate_url,
        running(
            monkeypatch,
            tmp_path,
            {"shadowed": FLOW.replace("CANDIDATE", candidate_url)},
            store=store,
        ) as stack,
    ):
        execution_id = stack.start("shadowed")

        def recorded() -> bool:
            match = stack.document(execution_id)["steps"].get("match") or {}
            return match.get("shadow") is not None

        until(recorded, 20, "the shadow's outcome was not recorded")
        shadow = stack.document(execution_id)["steps"]["match"]["shadow"]
        assert shadow["status"] == "succeeded", shadow["error"]
        assert len(shadow["output"]["padding"]) == 1_300_000


async def test_shadows_merge_by_step_and_item_and_a_redrive_keeps_those_of_kept_steps(
    store: ExecutionStore,
) -> None:
    items = [ItemResult(status=StepStatus.SUCCEEDED), ItemResult(status=StepStatus.FAILED)]
    execution = Execution(
        execution_id="shadowed-1",
        flow="f",
        status=ExecutionStatus.RUNNING,
        input={},
        steps={
            "kept": StepResult(status=StepStatus.SUCCEEDED, output=1),
            "each": StepResult(status=StepStatus.FAILED, output=[1, None], items=items),
            "failed": StepResult(status=StepStatus.FAILED, error="boom"),
        },
    )
    execution.finish(ExecutionStatus.FAILED, "boom")
    await store.save(execution, delivered=True)

    def shadow(output: str) -> ShadowResult:
        return ShadowResult(status=StepStatus.SUCCEEDED, agree=True, output=output)

    await store.record_shadows("shadowed-1", {"kept": shadow("a"), "each#0": shadow("b")})
    await store.record_shadows("shadowed-1", {"each#1": shadow("c"), "failed": shadow("d")})
    read = await store.get("shadowed-1")
    assert read is not None
    assert read.steps["kept"].shadow == shadow("a")
    assert [item.shadow for item in read.steps["each"].items or []] == [shadow("b"), shadow("c")]
    assert read.steps["failed"].shadow == shadow("d")

    await store.redrive("shadowed-1")
    again = await store.get("shadowed-1")
    assert again is not None and again.run == 2
    assert again.steps["kept"].shadow == shadow("a")
    assert (again.steps["each"].items or [])[0].shadow == shadow("b")
    assert "failed" not in again.steps  # runs again, and is shadowed again

"""Child flows end to end on one instance, on each store: the service (in-process
transport) on loopback, a parent flow whose `flow:` step runs `score` as child
executions calling the stand-ins over HTTP."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from service.backends.memory import MemoryStore
from service.backends.store import ClaimState, ExecutionStore
from service.dev.standins import StandIns
from service.engine.kinds import flow as kinds_flow
from service.errors import StoreUnavailable
from service.execution import (
    Execution,
    ExecutionStatus,
    ItemResult,
    ParentRef,
    StepResult,
    StepStatus,
    Wait,
    now,
)
from service.metrics import Metrics
from service.telemetry import Tracing
from service.worker.children import Children
from service.worker.publisher import RequestPublisher
from service.worker.wakes import Wakes
from tests.backends.test_store import fresh_firestore_store_like
from tests.support.fakes import RecordingTransport
from tests.support.waits import until
from tests.worker.test_waits import running

ANALYSIS = "/match-analysis-user-vacancy"

SCORE = """
input:
  user_id: {type: string, required: true}
  vacancy_id: {type: string, required: true}
steps:
  analyse:
    call: ${env.DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL}
    retry: {maximum_attempts: 1}
    body: {user_id: "${input.user_id}", vacancy_id: "${input.vacancy_id}"}
result: {vacancy: "${input.vacancy_id}", fit: "${steps.analyse.output.fit}"}
"""

ONE = """
input:
  user_id: {type: string, required: true}
steps:
  one:
    flow: score
    input: {user_id: "${input.user_id}", vacancy_id: v1}
"""

MANY = """
input:
  user_id: {type: string, required: true}
  vacancies: {type: array, required: true}
steps:
  each:
    flow: score
    for_each: ${input.vacancies}
    max_concurrency: 5
    input: {user_id: "${input.user_id}", vacancy_id: "${item}"}TOLERATE
"""


async def test_a_child_runs_as_an_execution_of_its_own_and_its_result_is_the_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: ExecutionStore
) -> None:
    flows = {"score": SCORE, "parent-one": ONE}
    with running(monkeypatch, tmp_path, flows, StandIns(), store) as stack:
        parent_id = stack.start("parent-one")
        done = stack.reaches(parent_id, "succeeded")
        step = done["steps"]["one"]
        assert step["output"] == {"vacancy": "v1", "fit": 0.8}
        child = stack.document(step["child"])
        assert child["status"] == "succeeded" and child["flow"] == "score"
        assert child["parent"]["execution_id"] == parent_id
        assert child["parent"]["step"] == "one" and child["parent"]["index"] is None
        assert [call["vacancy_id"] for call in stack.calls(ANALYSIS)] == ["v1"]
        assert len(stack.delivered(parent_id)) == 1
        assert stack.delivered(step["child"]) == []  # its parent is its receiver


async def test_twenty_children_run_five_at_a_time_while_their_parent_waits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: ExecutionStore
) -> None:
    flows = {"score": SCORE, "parent-many": MANY.replace("TOLERATE", "")}
    functions = StandIns(delay_s=0.2)
    vacancies = [f"v{n}" for n in range(20)]
    with running(monkeypatch, tmp_path, flows, functions, store) as stack:
        parent_id = stack.start("parent-many", vacancies=vacancies)
        waiting = stack.reaches(parent_id, "waiting")
        assert waiting["steps"]["each"]["wait"]["kind"] == "flow"
        done = stack.reaches(parent_id, "succeeded", timeout_s=30)
        each = done["steps"]["each"]
        assert each["output"] == [{"vacancy": v, "fit": 0.8} for v in vacancies]
        assert functions.peak[ANALYSIS] == 5
        assert len(stack.calls(ANALYSIS)) == 20  # each child called once
        children = {item["child"] for item in each["items"]}
        assert len(children) == 20
        indexes = sorted(stack.document(child)["parent"]["index"] for child in children)
        assert indexes == list(range(20))
        assert len(stack.delivered(parent_id)) == 1
        listed = stack.client.get("/executions", params={"parent": parent_id, "limit": 50})
        assert {summary["execution_id"] for summary in listed.json()["executions"]} == children
        assert stack.client.get("/executions", params={"parent": "no/such"}).status_code == 422


@pytest.mark.parametrize(("tolerate", "status"), [(2, "succeeded"), (1, "failed")])
async def test_failed_children_within_tolerate_leave_the_parent_succeeded(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    store: ExecutionStore,
    tolerate: int,
    status: str,
) -> None:
    parent = MANY.replace("TOLERATE", f"\n    tolerate: {{failures: {tolerate}}}")
    functions = StandIns()
    functions.script[ANALYSIS] = [400, 400]  # the first two children fail
    with running(
        monkeypatch, tmp_path, {"score": SCORE, "parent-many": parent}, functions, store
    ) as stack:
        parent_id = stack.start("parent-many", vacancies=["a", "b", "c", "d"])
        done = stack.reaches(parent_id, status, timeout_s=20)
        each = done["steps"]["each"]
        failed = [n for n, item in enumerate(each["items"]) if item["status"] == "failed"]
        assert len(failed) == 2
        assert all(each["output"][n] is None for n in failed)
        assert all("child " in each["items"][n]["error"] for n in failed)
        assert sum(output is not None for output in each["output"]) == 2


async def test_a_redriven_parent_redrives_only_its_children_that_did_not_succeed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: ExecutionStore
) -> None:
    """The same children, the failed ones in their second run; the others keep their
    results and are not called again; no new child is started."""
    functions = StandIns()
    functions.script[ANALYSIS] = [400, 400]  # the first two children fail
    flows = {"score": SCORE, "parent-many": MANY.replace("TOLERATE", "")}
    with running(monkeypatch, tmp_path, flows, functions, store) as stack:
        parent_id = stack.start("parent-many", vacancies=["a", "b", "c", "d"])
        first = stack.reaches(parent_id, "failed", timeout_s=20)["steps"]["each"]["items"]
        lost = {item["child"] for item in first if item["status"] == "failed"}
        kept = {item["child"] for item in first if item["status"] == "succeeded"}
        assert len(lost) == 2 and len(kept) == 2
        # Refused (409) until its delivery is recorded, a moment after the webhook has it.
        until(
            lambda: stack.client.post(f"/executions/{parent_id}/redrive").status_code == 202,
            5,
            "the parent's first run not delivered, or its re-drive refused",
        )
        done = stack.reaches(parent_id, "succeeded", timeout_s=20)
        assert done["run"] == 2
        each = done["steps"]["each"]
        assert [item["child"] for item in each["items"]] == [item["child"] for item in first]
        assert each["output"] == [{"vacancy": v, "fit": 0.8} for v in "abcd"]
        assert len(stack.calls(ANALYSIS)) == 6  # four, then the two that failed
        runs = {child: stack.document(child)["run"] for child in lost | kept}
        assert runs == {**dict.fromkeys(lost, 2), **dict.fromkeys(kept, 1)}
        listed = stack.client.get("/executions", params={"parent": parent_id, "limit": 50})
        assert len(listed.json()["executions"]) == 4
        until(lambda: len(stack.delivered(parent_id)) == 2, 5, "one delivery per run")


async def test_a_child_redriven_on_its_own_brings_its_failed_parent_to_follow(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: ExecutionStore
) -> None:
    functions = StandIns()
    functions.script[ANALYSIS] = [400]  # the child's first run fails
    with running(
        monkeypatch, tmp_path, {"score": SCORE, "parent-one": ONE}, functions, store
    ) as stack:
        parent_id = stack.start("parent-one")
        child = stack.reaches(parent_id, "failed", timeout_s=20)["steps"]["one"]["child"]
        until(lambda: stack.delivered(parent_id), 5, "the parent's first run not delivered")
        until(
            lambda: stack.client.post(f"/executions/{child}/redrive").status_code == 202,
            5,
            "the child was not re-driven",
        )
        done = stack.reaches(parent_id, "succeeded", timeout_s=20)
        assert done["run"] == 2
        assert done["steps"]["one"]["output"] == {"vacancy": "v1", "fit": 0.8}
        assert done["steps"]["one"]["child"] == child
        assert stack.document(child)["run"] == 2  # taken as it ended: not re-driven again
        assert len(stack.calls(ANALYSIS)) == 2


async def test_a_push_starts_children_for_a_bounded_time_and_their_ends_start_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: ExecutionStore
) -> None:
    """Out of time after one round, the parent suspends with the rest not started; the
    ends of those running resume it to start more, until every item has run once."""
    monkeypatch.setattr(kinds_flow, "START_ROUND", 3)
    monkeypatch.setattr(kinds_flow, "START_BUDGET_S", 0.0)
    parent = MANY.replace("TOLERATE", "").replace("max_concurrency: 5", "max_concurrency: 10")
    functions = StandIns()
    held = functions.gates[ANALYSIS] = threading.Event()
    vacancies = [f"v{n}" for n in range(10)]
    try:
        with running(
            monkeypatch, tmp_path, {"score": SCORE, "parent-many": parent}, functions, store
        ) as stack:
            parent_id = stack.start("parent-many", vacancies=vacancies)
            waiting = stack.reaches(parent_id, "waiting")["steps"]["each"]["items"]
            assert [item["child"] is not None for item in waiting] == [True] * 3 + [False] * 7
            held.set()
            done = stack.reaches(parent_id, "succeeded", timeout_s=30)
            assert done["steps"]["each"]["output"] == [
                {"vacancy": v, "fit": 0.8} for v in vacancies
            ]
            assert len(stack.calls(ANALYSIS)) == 10
    finally:
        held.set()


async def test_a_child_input_that_does_not_fit_its_flow_fails_its_item_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: ExecutionStore
) -> None:
    flows = {"score": SCORE, "parent-many": MANY.replace("TOLERATE", "")}
    with running(monkeypatch, tmp_path, flows, StandIns(), store) as stack:
        parent_id = stack.start("parent-many", vacancies=["v1", 7])
        done = stack.reaches(parent_id, "failed")
        items = done["steps"]["each"]["items"]
        assert items[0]["status"] == "succeeded"
        assert items[1]["status"] == "failed" and items[1]["child"] is None
        assert "input.vacancy_id" in items[1]["error"]


async def test_children_ending_at_once_on_two_instances_resume_their_parent_once(
    store: ExecutionStore,
) -> None:
    """Each child's end lands once, whatever instance reports it, and only one end, of
    the last ones, resumes the parent: one resume, however they interleave; the resumed
    run sees every end."""
    count = 500
    parent = Execution(
        execution_id=f"parent-{uuid.uuid4().hex[:8]}",
        flow="parent-many",
        status=ExecutionStatus.RUNNING,
        input={},
    )
    parent.steps["each"] = StepResult(
        status=StepStatus.WAITING,
        wait=Wait(kind="flow", timeout_at=now() + timedelta(hours=1), children=count),
        wake_at=now() + timedelta(hours=1),
        items=[ItemResult(status=StepStatus.RUNNING, child=f"c{n}") for n in range(count)],
    )
    await store.claim(parent, "owner", 30)
    parent.suspend()
    assert not await store.suspend(parent)
    other = fresh_firestore_store_like(store)
    transport = RecordingTransport()
    reporters = []
    for instance in (store, other):
        requests = RequestPublisher(transport, "requests", Tracing())
        wakes = Wakes(instance, requests, Metrics())
        reporters.append(Children(flows={}, store=instance, requests=requests, wakes=wakes))

    async def end(n: int) -> None:
        ref = ParentRef(execution_id=parent.execution_id, step="each", index=n)
        child = Execution(
            execution_id=f"c{n}",
            flow="score",
            status=ExecutionStatus.SUCCEEDED,
            input={},
            parent=ref,
            result={"n": n},
        )
        while True:  # as a redelivery would, after a store too contended to answer
            try:
                return await reporters[n % 2].ended(child)
            except StoreUnavailable:
                await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(end(n) for n in range(count)))
        resumes = [
            m for m, _ in transport.on("requests") if m["execution_id"] == parent.execution_id
        ]
        assert len(resumes) == 1
        await end(3)  # reported again (a redelivery): recorded once, no resume
        assert len(transport.on("requests")) == 1
        resumed = await other.claim(parent, "the resume", 30)
        assert resumed.state == ClaimState.CLAIMED and resumed.execution is not None
        assert set(resumed.execution.callbacks) == {f"each#{n}" for n in range(count)}
        assert resumed.execution.callbacks["each#7"]["result"] == {"n": 7}
    finally:
        if other is not store:
            await other.close()


RECURSE = """
input:
  user_id: {type: string, required: true}
steps:
  deeper:
    flow: recurse
    input: {user_id: "${input.user_id}"}
"""


def test_a_chain_of_children_deeper_than_five_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with running(monkeypatch, tmp_path, {"recurse": RECURSE}, StandIns()) as stack:
        root = stack.start("recurse")
        done = stack.reaches(root, "failed", timeout_s=20)
        chain = [root]
        document = done
        while document["steps"]["deeper"].get("child"):
            chain.append(document["steps"]["deeper"]["child"])
            document = stack.document(chain[-1])
        assert len(chain) == 6  # the root and five generations of children
        deepest = document["steps"]["deeper"]["error"]
        assert deepest.startswith("flow: children nest at most 5 deep: " + " > ".join(chain))
        assert [stack.document(c)["status"] for c in chain] == ["failed"] * 6
        assert len(stack.delivered(root)) == 1


async def test_cancelling_a_parent_cancels_the_children_it_left_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: ExecutionStore
) -> None:
    functions = StandIns()
    held = functions.gates[ANALYSIS] = threading.Event()
    flows = {"score": SCORE, "parent-one": ONE}
    try:
        with running(monkeypatch, tmp_path, flows, functions, store) as stack:
            parent_id = stack.start("parent-one")
            waiting = stack.reaches(parent_id, "waiting")
            child = waiting["steps"]["one"]["child"]
            until(lambda: len(stack.calls(ANALYSIS)) == 1, 10, "the child never called")
            answer = stack.client.post(f"/executions/{parent_id}/cancel")
            assert answer.status_code == 202, answer.text
            stack.reaches(parent_id, "cancelled")
            cancelled = stack.reaches(child, "cancelled")
            assert cancelled["steps"]["analyse"]["status"] == "cancelled"
            assert len(stack.delivered(parent_id)) == 1 and stack.delivered(child) == []
            held.set()  # the abandoned call ends, and the service stops without waiting
    finally:
        held.set()


class _ReportsLost(MemoryStore):
    """A store that cannot take any child's report: as if every one were lost."""

    async def child_ended(self, parent: ParentRef, child: str, end: Any) -> Any:
        raise StoreUnavailable("execution store: unavailable (as the test wants)")


async def test_a_child_whose_report_is_lost_is_read_from_its_document(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The parent's recheck finds the child ended in its own document and goes on."""
    monkeypatch.setattr(kinds_flow, "RECHECK_S", 0.3)
    flows = {"score": SCORE, "parent-one": ONE}
    store = _ReportsLost()
    with running(monkeypatch, tmp_path, flows, StandIns(), store) as stack:
        parent_id = stack.start("parent-one")
        done = stack.reaches(parent_id, "succeeded", timeout_s=20)
        assert done["steps"]["one"]["output"] == {"vacancy": "v1", "fit": 0.8}
        assert stack.calls(ANALYSIS) and len(stack.calls(ANALYSIS)) == 1


async def test_a_child_not_ended_by_the_step_s_timeout_fails_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: ExecutionStore
) -> None:
    functions = StandIns()
    held = functions.gates[ANALYSIS] = threading.Event()
    parent = ONE.replace("vacancy_id: v1}", "vacancy_id: v1}\n    timeout: 1s")
    try:
        with running(
            monkeypatch, tmp_path, {"score": SCORE, "p": parent}, functions, store
        ) as stack:
            parent_id = stack.start("p")
            done = stack.reaches(parent_id, "failed", timeout_s=15)
            step = done["steps"]["one"]
            assert step["error"] == f"child {step['child']} did not end within 1s"
            held.set()  # the child's call goes on, and the service stops without waiting
    finally:
        held.set()

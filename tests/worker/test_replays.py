"""Replays and comparisons through the service, on each store: a replay is a new
execution of the same input (today's version, or one kept), delivered only where it is
told; comparing it with its original finds the step whose answer changed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from service.backends.store import ExecutionStore
from service.engine.flow import load_flow
from service.execution import Execution, ExecutionStatus
from tests.backends.test_store import fresh_firestore_store_like
from tests.support.waits import until
from tests.worker.test_waits import Stack, running

TWO = """
input:
  user_id: {type: string, required: true}
steps:
  embed:
    call: ${env.DEFAULT_CREATE_USER_EMBEDDINGS_URL}
    body: {user_id: "${input.user_id}"}
  match:
    after: [embed]
    call: ${env.DEFAULT_MATCH_CANDIDATO_URL}
    body: {user_id: "${input.user_id}", release: RELEASE}
"""


def replayed(stack: Stack, execution_id: str, **options: str) -> dict[str, str]:
    response = stack.client.post(f"/executions/{execution_id}/replay", json=options)
    assert response.status_code == 202, response.text
    replay: dict[str, str] = response.json()
    assert replay["replay_of"] == execution_id and replay["status"] == "queued"
    return replay


async def test_a_replay_and_its_comparison_find_the_step_whose_answer_changed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: ExecutionStore
) -> None:
    older = tmp_path / "two.yaml"
    older.write_text(TWO.replace("RELEASE", "old"))
    env = {
        "DEFAULT_CREATE_USER_EMBEDDINGS_URL": "http://a/x",
        "DEFAULT_MATCH_CANDIDATO_URL": "http://a/y",
    }
    kept = load_flow(older, env)  # its version: of the definition, whatever the environment
    deployed_before = fresh_firestore_store_like(store)  # another instance, an earlier deploy
    await deployed_before.keep_flow("two", kept.version, kept.source)
    if deployed_before is not store:
        await deployed_before.close()

    def scenario() -> None:
        flows = {"two": TWO.replace("RELEASE", "new")}
        with running(monkeypatch, tmp_path, flows, store=store) as stack:
            original = stack.start("two")
            before = stack.reaches(original, "succeeded")
            until(lambda: stack.delivered(original), 10, "the original was not delivered")

            stack.functions.vacancies = 4  # the model behind match-candidato changed
            replay = replayed(stack, original)
            assert replay["flow_version"] == before["flow_version"] != kept.version
            after = stack.reaches(replay["execution_id"], "succeeded")
            assert after["replay_of"] == original and after["input"] == before["input"]
            time.sleep(0.3)
            assert stack.delivered(replay["execution_id"]) == []  # no webhook unless given

            compared = stack.client.get(f"/executions/{original}/compare/{replay['execution_id']}")
            assert compared.status_code == 200, compared.text
            comparison = compared.json()
            assert comparison["equal"] is False
            assert comparison["steps"]["embed"]["equal"] is True
            assert comparison["steps"]["match"]["differences"] == ["/vacancies/3"]
            assert comparison["steps"]["match"]["statuses"] == ["succeeded", "succeeded"]

            on_kept = replayed(stack, original, flow_version=kept.version)
            stack.reaches(on_kept["execution_id"], "succeeded")
            bodies = [call["release"] for call in stack.calls("/match-candidato")]
            assert bodies == ["new", "new", "old"]  # the kept version's call

            many = stack.client.post(
                "/executions/replay",
                json={"flow": "two", "limit": 2, "webhook_url": stack.webhook_url},
            )
            assert many.status_code == 202, many.text
            replays = many.json()["replays"]
            assert many.json()["count"] == 2 == len(replays)
            for each in replays:
                stack.reaches(each["execution_id"], "succeeded")
            delivered = [each["execution_id"] for each in replays]
            until(lambda: all(stack.delivered(i) for i in delivered), 10, "replays not delivered")
            assert all(len(stack.delivered(each["execution_id"])) == 1 for each in replays)

    await asyncio.to_thread(scenario)


async def test_a_replay_asked_again_with_its_idempotency_key_is_the_same_and_runs_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: ExecutionStore
) -> None:
    """An operator's retry (a lost answer, a second click) names the replay it asked for; in
    bulk, the key names one replay per execution."""

    def scenario() -> None:
        with running(
            monkeypatch, tmp_path, {"two": TWO.replace("RELEASE", "new")}, store=store
        ) as stack:
            original = stack.start("two")
            stack.reaches(original, "succeeded")
            key = {"Idempotency-Key": "rollout-42"}
            first = stack.client.post(f"/executions/{original}/replay", headers=key)
            assert first.status_code == 202, first.text
            replay = first.json()["execution_id"]
            stack.reaches(replay, "succeeded")
            again = stack.client.post(f"/executions/{original}/replay", headers=key)
            assert again.status_code == 202 and again.json()["execution_id"] == replay
            bulk = stack.client.post("/executions/replay", json={"flow": "two"}, headers=key)
            assert bulk.status_code == 202, bulk.text
            by_original = {
                each["replay_of"]: each["execution_id"] for each in bulk.json()["replays"]
            }
            assert by_original[original] == replay  # the original's, as asked one by one
            stack.reaches(by_original[replay], "succeeded")  # the replay's own: a new one
            time.sleep(0.3)
            assert len(stack.calls("/match-candidato")) == 3  # original, replay, its replay
            other = stack.client.post(
                f"/executions/{original}/replay", headers={"Idempotency-Key": "rollout-43"}
            )
            assert other.json()["execution_id"] not in {replay, *by_original.values()}
            empty = stack.client.post(
                f"/executions/{original}/replay", headers={"Idempotency-Key": ""}
            )
            assert empty.status_code == 422 and "Idempotency-Key" in empty.text

    await asyncio.to_thread(scenario)


def test_a_replay_is_refused_naming_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with running(monkeypatch, tmp_path, {"two": TWO.replace("RELEASE", "new")}) as stack:
        original = stack.start("two")
        stack.reaches(original, "succeeded")
        unknown = stack.client.post("/executions/nobody/replay")
        assert unknown.status_code == 404
        for version, reason in (("zz", "flow_version"), ("0123456789abcdef", "no version")):
            refused = stack.client.post(
                f"/executions/{original}/replay", json={"flow_version": version}
            )
            assert refused.status_code == 422 and reason in refused.text, refused.text
        extra = stack.client.post(f"/executions/{original}/replay", json={"flow": "other"})
        assert extra.status_code == 422 and "body.flow" in extra.text
        rejected = Execution(
            execution_id="rejected-1", flow="two", status=ExecutionStatus.RUNNING, input={}
        )
        rejected.finish(ExecutionStatus.REJECTED, "input.user_id: required")
        asyncio.run(stack.store.save(rejected, delivered=True))
        conflict = stack.client.post("/executions/rejected-1/replay")
        assert conflict.status_code == 409 and "no input to replay" in conflict.text
        missing = stack.client.get(f"/executions/{original}/compare/nobody")
        assert missing.status_code == 404

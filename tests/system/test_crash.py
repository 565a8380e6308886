"""Crashes, shutdowns, duplicates and large outputs on the real emulators (Pub/Sub and
Firestore).

The service runs as its own process with the Firestore store and two workers, as on
Cloud Run, so a killed instance's execution is picked up by the next delivery after
its lease.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.dev.emulator import Emulator, free_port
from service.dev.standins import StandIns
from tests.support.deployment import Deployment, deployed
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.emulator

LEASE_S = 4


@pytest.fixture
def stack(emulator: Emulator, firestore_emulator: Emulator, tmp_path: Path) -> Iterator[Deployment]:
    settings = {
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
        "EXECUTION_STORE": "firestore",
        "EXECUTION_LEASE_S": str(LEASE_S),
        "WEB_CONCURRENCY": "2",  # as on a 2-vCPU Cloud Run instance, whatever CI has
    }
    with deployed(emulator, StandIns(delay_s=0.3), tmp_path / "service.log", settings) as running:
        yield running


def test_fifty_publishes_of_one_execution_run_it_once(stack: Deployment) -> None:
    message = stack.message()
    data = json.dumps(message).encode()
    for _ in range(50):
        stack.admin.publish("requests", data, {"execution_id": message["execution_id"]})
    stack.wait(lambda: stack.webhooks(message["execution_id"]), 60, "no webhook")
    time.sleep(3)  # every copy pushed, every nacked copy pushed again
    calls = stack.calls(message["input"]["user_id"])
    print(
        f"\n50 publishes of one execution: ML calls {dict(calls)}, webhooks "
        f"{len(stack.webhooks(message['execution_id']))}"
    )
    assert calls == {
        "/create-user-embeddings": 1,
        "/profession-orchestrator": 1,
        "/match-candidato": 1,
        "/match-analysis-user-vacancy": 3,
    }
    assert len(stack.webhooks(message["execution_id"])) == 1


def test_a_killed_instance_s_execution_resumes_after_restart(stack: Deployment) -> None:
    message = stack.message()
    user = message["input"]["user_id"]
    stack.admin.publish("requests", json.dumps(message).encode())
    # Kill the instance once the first steps are done and the analyses have started.
    stack.wait(lambda: stack.calls(user)["/match-analysis-user-vacancy"] > 0, 30, "no analysis")
    killed_at = time.monotonic()
    stack.service.signal(signal.SIGKILL)
    before = stack.calls(user)
    stack.service.start()
    stack.wait(lambda: stack.webhooks(message["execution_id"]), 60, "execution lost")
    recovered_s = time.monotonic() - killed_at
    time.sleep(2)
    after = stack.calls(user)
    print(
        f"\nSIGKILL mid-execution: recovered in {recovered_s:.1f} s (lease {LEASE_S} s); "
        f"calls before {dict(before)}, after {dict(after)}"
    )
    [document] = stack.webhooks(message["execution_id"])
    assert document["status"] == "succeeded"
    # Steps that had finished were not called again; only the interrupted one ran again.
    for path in ("/create-user-embeddings", "/profession-orchestrator", "/match-candidato"):
        assert after[path] == 1
    assert after["/match-analysis-user-vacancy"] == before["/match-analysis-user-vacancy"] + 3


def test_two_workers_serve_and_die_with_a_killed_supervisor(stack: Deployment) -> None:
    """SIGKILL gives the supervisor no chance to stop its workers: Linux does it."""
    workers = stack.service.workers()

    def started() -> list[int]:
        lines = stack.service.log.read_text().splitlines()
        return sorted(json.loads(line)["pid"] for line in lines if '"service started"' in line)

    stack.wait(lambda: len(started()) == 2, 30, "a worker did not start")  # /ready saw one
    assert len(workers) == 2 and started() == sorted(workers)
    response = httpx.post(f"{stack.service.url}/orchestrate", json=stack.message()["input"])
    assert response.status_code == 202
    stack.service.signal(signal.SIGKILL)
    stack.wait(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10, "orphans")


def test_sigterm_never_answers_2xx_for_unfinished_work(stack: Deployment) -> None:
    """Driven directly, so the push's own answer can be read."""
    held = stack.functions.gates["/create-user-embeddings"] = threading.Event()
    message = stack.message()
    envelope = {
        "message": {
            "data": base64.b64encode(json.dumps(message).encode()).decode(),
            "messageId": "direct-1",
        }
    }
    answers: list[int | str] = []

    def push() -> None:
        try:
            response = httpx.post(f"{stack.service.url}/pubsub/push", json=envelope, timeout=60)
            answers.append(response.status_code)
        except httpx.TransportError as exc:
            answers.append(type(exc).__name__)

    thread = threading.Thread(target=push)
    thread.start()
    stack.wait(lambda: stack.calls(message["input"]["user_id"]), 30, "no call started")
    started = time.monotonic()
    code = stack.service.signal(signal.SIGTERM)
    thread.join(timeout=30)
    print(
        f"\nSIGTERM mid-execution: push answered {answers}, process exit {code} "
        f"after {time.monotonic() - started:.1f} s"
    )
    held.set()  # the abandoned call's handler may end now
    assert answers and answers[0] == 503
    assert stack.webhooks(message["execution_id"]) == []


def large_outputs(functions: StandIns, delay_s: float) -> None:
    """A 3 MB answer from the profession orchestrator, 400 vacancies analysed in 4 KB each."""
    functions.delay_s = delay_s
    functions.vacancies = 400
    functions.padding.update(
        {"/profession-orchestrator": 3_000_000, "/match-analysis-user-vacancy": 4000}
    )


def test_large_outputs_and_a_400_item_for_each_are_delivered_and_read_back_whole(
    stack: Deployment,
) -> None:
    """A 3 MB answer and 400 analyses of 4 KB: ~4.7 MB of outputs on Firestore."""
    large_outputs(stack.functions, delay_s=0.01)
    message = stack.message()
    user = message["input"]["user_id"]
    response = httpx.post(
        f"{stack.service.url}/orchestrate",
        json={**message["input"], "webhook_url": stack.webhook_url},
    )
    assert response.status_code == 202
    execution_id = response.json()["execution_id"]
    early = httpx.get(response.json()["status_url"]).json()
    assert early["status"] in {"queued", "running"}
    stack.wait(lambda: stack.webhooks(execution_id), 120, "no webhook")
    [document] = stack.webhooks(execution_id)
    assert document["status"] == "succeeded", document["error"]
    result = document["result"]  # the default flow's result: ~4.7 MB of it
    assert len(result["professions"]["padding"]) == 3_000_000
    analyses = result["vacancies"]
    assert [a["vacancy_id"] for a in analyses] == [f"v{n}" for n in range(1, 401)]
    assert {len(a["analysis"]["padding"]) for a in analyses} == {4000}
    whole = stack.document(execution_id)
    assert whole["result"] == result
    assert whole["steps"]["match_analysis_user_vacancy"]["output"] == analyses
    assert len(whole["steps"]["profession_orchestrator"]["output"]["padding"]) == 3_000_000
    assert stack.calls(user) == {
        "/create-user-embeddings": 1,
        "/profession-orchestrator": 1,
        "/match-candidato": 1,
        "/match-analysis-user-vacancy": 400,
    }
    print(f"\nlargest output 3 MB, widest for_each 400 items: {len(json.dumps(document))} bytes")


def test_a_killed_instance_resumes_large_outputs_without_calling_finished_steps(
    stack: Deployment,
) -> None:
    large_outputs(stack.functions, delay_s=0.05)
    message = stack.message()
    user = message["input"]["user_id"]
    stack.admin.publish("requests", json.dumps(message).encode())
    stack.wait(lambda: stack.calls(user)["/match-analysis-user-vacancy"] > 50, 60, "no analysis")
    stack.service.signal(signal.SIGKILL)
    before = stack.calls(user)
    stack.service.start()
    stack.wait(lambda: stack.webhooks(message["execution_id"]), 120, "execution lost")
    after = stack.calls(user)
    [document] = stack.webhooks(message["execution_id"])
    assert document["status"] == "succeeded"
    assert len(document["result"]["professions"]["padding"]) == 3_000_000
    for path in ("/create-user-embeddings", "/profession-orchestrator", "/match-candidato"):
        assert after[path] == 1
    # A for_each step's outcome is stored when it ends: the interrupted one runs again whole.
    assert after["/match-analysis-user-vacancy"] == before["/match-analysis-user-vacancy"] + 400


def test_a_direct_producer_s_message_runs_once_when_pushed_twice(stack: Deployment) -> None:
    """Only flow and input; the webhook fails at first, so the emulator pushes it again."""
    stack.webhook.script = [503] * 4
    message = stack.message()
    user = message["input"]["user_id"]
    direct = {"flow": "ml-orchestration", "input": message["input"]}
    message_id = stack.admin.publish("requests", json.dumps(direct).encode())
    stack.wait(lambda: len(stack.deliveries(message_id)) >= 5, 60, "no redelivery")
    time.sleep(2)  # a second run would deliver again
    assert [json.loads(d.body)["status"] for d in stack.deliveries(message_id)] == ["succeeded"] * 5
    assert json.loads(stack.deliveries(message_id)[-1].body)["execution_id"] == message_id
    assert stack.calls(user) == {
        "/create-user-embeddings": 1,
        "/profession-orchestrator": 1,
        "/match-candidato": 1,
        "/match-analysis-user-vacancy": 3,
    }


@pytest.mark.parametrize(("padding", "omitted"), [(9_970_000, False), (10_200_000, True)])
def test_a_result_at_pubsub_s_limit_is_published_whole_and_beyond_it_without_outputs(
    stack: Deployment, padding: int, omitted: bool
) -> None:
    """Answers of ~10 MB (allowed: 10 MiB) on Firestore, then at the emulator's 10 MB limit."""
    stack.functions.delay_s = 0.01
    stack.functions.padding["/profession-orchestrator"] = padding  # in the flow's result
    message = stack.message()
    stack.admin.publish("requests", json.dumps(message).encode())
    stack.wait(lambda: stack.webhooks(message["execution_id"]), 60, "no webhook")
    [document] = stack.webhooks(message["execution_id"])
    assert document["status"] == "succeeded"
    [result] = stack.admin.pull("results-pull")
    data = json.loads(base64.b64decode(result["data"]))
    if omitted:
        assert document["outputs"] == data["outputs"] == result["attributes"]["outputs"]
        assert document["outputs"] == "omitted"  # the webhook's cap is 10 MB too
        status_url = result["attributes"]["status_url"]
        assert status_url.endswith(f"/executions/{message['execution_id']}")
    else:
        assert "outputs" not in result["attributes"] and "outputs" not in document
        assert len(data["result"]["professions"]["padding"]) == padding
    whole = stack.document(message["execution_id"])
    assert len(whole["steps"]["profession_orchestrator"]["output"]["padding"]) == padding


@pytest.mark.timing
def test_a_cancel_and_a_re_drive_through_another_instance(
    stack: Deployment, tmp_path: Path
) -> None:
    """Instance B takes the operator's calls; instance A runs the execution (Firestore)."""
    other = ServiceProcess(stack.service.env, free_port(), tmp_path / "b.log")
    other.start()
    try:
        held = stack.functions.gates["/create-user-embeddings"] = threading.Event()
        message = stack.message()
        user = message["input"]["user_id"]
        stack.admin.publish("requests", json.dumps(message).encode())
        stack.wait(lambda: stack.calls(user), 30, "no call started")
        asked = time.monotonic()
        response = httpx.post(f"{other.url}/executions/{message['execution_id']}/cancel")
        assert response.json()["status"] == "cancelling"
        stack.wait(lambda: stack.webhooks(message["execution_id"]), 10, "not cancelled")
        took = time.monotonic() - asked
        print(f"\ncancel through another instance: delivered after {took:.2f} s")
        assert took < 2
        [cancelled] = stack.webhooks(message["execution_id"])
        assert cancelled["status"] == "cancelled"

        held.set()
        stack.functions.delay_s = 0.01
        redrive = httpx.post(f"{other.url}/executions/{message['execution_id']}/redrive")
        assert redrive.status_code == 202 and redrive.json()["run"] == 2
        stack.wait(lambda: len(stack.webhooks(message["execution_id"])) == 2, 30, "no run 2")
        second = stack.webhooks(message["execution_id"])[1]
        assert (second["status"], second["run"]) == ("succeeded", 2)
        webhook_ids = [d.headers["webhook-id"] for d in stack.webhook.deliveries]
        assert webhook_ids == [message["execution_id"], f"{message['execution_id']}~run2"]
        listed = httpx.get(f"{other.url}/executions", params={"status": "succeeded"}).json()
        assert message["execution_id"] in [e["execution_id"] for e in listed["executions"]]
    finally:
        other.stop()


@pytest.mark.parametrize("min_score", [None, 0.75])
def test_the_default_flow_delivers_its_result_with_and_without_min_score(
    stack: Deployment, min_score: float | None
) -> None:
    """Stand-in vacancies score 0.9, 0.8, 0.7, 0.6: min_score 0.75 analyses the first two."""
    stack.functions.delay_s = 0.01
    stack.functions.vacancies = 4
    message = stack.message(min_score=min_score)
    execution_id = message["execution_id"]
    stack.admin.publish("requests", json.dumps(message).encode())
    stack.wait(lambda: stack.webhooks(execution_id), 60, "no webhook")
    [webhook] = stack.webhooks(execution_id)
    [published] = stack.admin.pull("results-pull")
    topic = json.loads(base64.b64decode(published["data"]))
    expected = ["v1", "v2"] if min_score else ["v1", "v2", "v3", "v4"]
    for delivered in (webhook, topic):
        assert delivered["status"] == "succeeded"
        assert "steps" not in delivered and "input" not in delivered
        assert delivered["status_url"].endswith(f"/executions/{execution_id}")
        result = delivered["result"]
        assert result["user_id"] == message["input"]["user_id"]
        assert result["professions"]["ok"] is True
        assert [v["vacancy_id"] for v in result["vacancies"]] == expected
        assert [v["analysis"]["vacancy_id"] for v in result["vacancies"]] == expected
        assert result["vacancies"][0]["score"] == 0.9
    analysed = sorted(
        c.body["vacancy_id"]
        for c in stack.functions.called("/match-analysis-user-vacancy")
        if c.body["user_id"] == message["input"]["user_id"]
    )
    assert analysed == expected

    whole = stack.document(execution_id)
    assert whole["result"] == webhook["result"]
    assert whole["input"]["min_score"] == min_score
    # `output:` kept the shaped analyses, not the raw answers; other steps keep theirs.
    assert whole["steps"]["match_analysis_user_vacancy"]["output"] == webhook["result"]["vacancies"]
    assert len(whole["steps"]["match_candidato"]["output"]["vacancies"]) == 4


FAN_OUT_CHILDREN = """
input:
  user_id: {type: string, required: true}
  vacancies: {type: array, required: true}
steps:
  each:
    flow: score-vacancy
    for_each: ${input.vacancies}
    max_concurrency: 10
    input: {user_id: "${input.user_id}", session_id: s, vacancy_id: "${item}"}
"""


def test_a_killed_instance_with_ten_children_running_ends_their_parent_once(
    emulator: Emulator, firestore_emulator: Emulator, tmp_path: Path
) -> None:
    """SIGKILL while a parent's ten children call: after the restart exactly ten children
    exist, every vacancy is scored, and the parent ends once, with one webhook."""
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "fan-out-children.yaml").write_text(FAN_OUT_CHILDREN)
    root = Path(__file__).resolve().parent.parent.parent / "flows"
    settings = {
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
        "EXECUTION_STORE": "firestore",
        "EXECUTION_LEASE_S": str(LEASE_S),
        "FLOWS_DIR": f"{root}:{root / 'examples'}:{flows}",
    }
    functions = StandIns(delay_s=1.0)
    with deployed(emulator, functions, tmp_path / "service.log", settings) as stack:
        user, vacancies = f"user-{time.time_ns()}", [f"v{n}" for n in range(10)]
        message = {
            "execution_id": f"parent-{time.time_ns()}",
            "flow": "fan-out-children",
            "input": {"user_id": user, "vacancies": vacancies},
            "webhook_url": stack.webhook_url,
        }
        stack.admin.publish("requests", json.dumps(message).encode())
        analyses = "/match-analysis-user-vacancy"
        stack.wait(lambda: stack.calls(user)[analyses] >= 5, 30, "the children never called")
        stack.service.signal(signal.SIGKILL)
        stack.service.start()
        document = stack.wait_for_webhook(message["execution_id"], timeout=90)
        time.sleep(2)  # any late duplicate would have arrived
        assert len(stack.webhooks(message["execution_id"])) == 1
        assert document["status"] == "succeeded", document
        whole = stack.document(message["execution_id"])
        children = [item["child"] for item in whole["steps"]["each"]["items"]]
        assert len(set(children)) == 10
        scored = [c.body["vacancy_id"] for c in functions.calls if c.path == analyses]
        print(f"\nSIGKILL with 10 children calling: {len(scored)} analysis calls for 10 vacancies")
        assert set(scored) == set(vacancies)  # an interrupted call runs again, no more
        assert len(scored) <= 20
        for child in children:
            assert stack.document(child)["status"] == "succeeded"

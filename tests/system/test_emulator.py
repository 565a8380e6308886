"""End to end on the real Pub/Sub emulator, with the service as its own process.

POST /orchestrate → emulator → push → stand-in ML functions (checking each ID
token's audience, minted through google-auth's metadata-server path) → signed
webhook and result topic.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from service.dev.emulator import Emulator
from service.dev.standins import StandIns
from tests.support.deployment import Deployment, deployed
from tests.support.identity import Identity
from tests.support.project import WEBHOOK_SECRET

pytestmark = pytest.mark.emulator

REQUESTS, RESULTS = "requests", "results"


@pytest.fixture(scope="module")
def deployment(
    emulator: Emulator,
    identity: Identity,
    metadata: Counter[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """Calls carry ID tokens minted through google-auth's metadata-server path."""
    functions = StandIns(delay_s=0.1, verify=identity.verify)
    log = tmp_path_factory.mktemp("service") / "service.log"
    with deployed(emulator, functions, log, {"ML_AUTH": "id_token"}) as running:
        yield running


def test_the_seed_request_runs_end_to_end(deployment: Deployment) -> None:
    seed = deployment.seed()
    started = time.perf_counter()
    response = httpx.post(f"{deployment.url}/orchestrate", json=seed)
    assert response.status_code == 202
    accepted = response.json()
    document = deployment.wait_for_webhook(accepted["execution_id"])
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"\n202 → webhook through the emulator: {elapsed_ms:.0f} ms (critical path 300 ms)")

    assert document["status"] == "succeeded", document
    assert deployment.deliveries(accepted["execution_id"])[0].verified
    assert deployment.calls(seed["user_id"]) == {
        "/create-user-embeddings": 1,
        "/profession-orchestrator": 1,
        "/match-candidato": 1,
        "/match-analysis-user-vacancy": 3,
    }
    # Each call carried an ID token minted for exactly the URL it called.
    for call in deployment.functions.calls:
        assert call.audience is not None and call.audience.endswith(call.path)

    [result] = deployment.results(timeout=10, until=1)
    assert result["attributes"] == {
        "execution_id": accepted["execution_id"],
        "flow": "ml-orchestration",
        "status": "succeeded",
    }
    assert json.loads(base64.b64decode(result["data"])) == document
    # The webhook carries the flow's result; the status endpoint, the whole document.
    assert [v["vacancy_id"] for v in document["result"]["vacancies"]] == ["v1", "v2", "v3"]
    status = httpx.get(accepted["status_url"]).json()
    assert status["result"] == document["result"]
    assert status["steps"]["match_candidato"]["output"]["vacancies"][0]["vacancy_id"] == "v1"


def test_duplicate_publishes_of_one_execution_run_once(deployment: Deployment) -> None:
    seed = deployment.seed()
    execution_id = str(uuid.uuid4())
    message = {
        "execution_id": execution_id,
        "flow": "ml-orchestration",
        "input": {k: v for k, v in seed.items() if k != "webhook_url"},
        "webhook_url": seed["webhook_url"],
        "requested_at": "2026-11-25T10:00:00Z",
    }
    data = json.dumps(message).encode()
    for _ in range(10):
        deployment.admin.publish(REQUESTS, data, {"execution_id": execution_id})
    deployment.wait_for_webhook(execution_id)
    time.sleep(3)  # let the emulator push every copy (and redeliver any nacked one)
    assert len(deployment.deliveries(execution_id)) == 1
    assert set(deployment.calls(seed["user_id"]).values()) == {1, 3}
    assert sum(deployment.calls(seed["user_id"]).values()) == 6


def test_poison_messages_are_acked_once_and_the_service_keeps_working(
    deployment: Deployment,
) -> None:
    deployment.admin.pull("results-pull")
    poison = [b"\xff not json", b"[1, 2]", json.dumps({"execution_id": "x"}).encode()]
    for data in poison:
        deployment.admin.publish(REQUESTS, data)
    time.sleep(3)  # a nacked message would be pushed again about every second
    rejected = deployment.results(timeout=5, until=len(poison) + 1)
    statuses = [message["attributes"]["status"] for message in rejected]
    print(f"\npoison messages: {len(poison)} published, {len(statuses)} rejections reported")
    assert statuses == ["rejected"] * len(poison)

    response = httpx.post(f"{deployment.url}/orchestrate", json=deployment.seed())
    document = deployment.wait_for_webhook(response.json()["execution_id"])
    assert document["status"] == "succeeded"


def test_no_token_or_secret_reaches_the_logs(deployment: Deployment) -> None:
    response = httpx.post(f"{deployment.url}/orchestrate", json=deployment.seed())
    deployment.wait_for_webhook(response.json()["execution_id"])
    text = deployment.service.log.read_text()
    messages = [json.loads(line).get("message") for line in text.splitlines() if line]
    assert "execution finished" in messages
    assert "eyJ" not in text  # a JWT's header
    assert WEBHOOK_SECRET.removeprefix("whsec_") not in text


def test_the_producer_s_trace_crosses_pub_sub_to_every_call_and_the_webhook(
    deployment: Deployment,
) -> None:
    """No exporter configured: the trace still travels, in the message's attributes."""
    trace = "0af7651916cd43dd8448eb211c80319c"
    seed = deployment.seed()
    response = httpx.post(
        f"{deployment.url}/orchestrate",
        json=seed,
        headers={"traceparent": f"00-{trace}-b7ad6b7169203331-01"},
    )
    execution_id = response.json()["execution_id"]
    deployment.wait_for_webhook(execution_id)
    calls = [c for c in deployment.functions.calls if c.body["user_id"] == seed["user_id"]]
    assert len(calls) == 6
    assert {(c.traceparent or "").split("-")[1] for c in calls} == {trace}
    [delivery] = deployment.deliveries(execution_id)
    assert delivery.headers["traceparent"].split("-")[1] == trace

"""POST /pubsub/push: the ack/nack table (docs/api.md), against real loopback servers."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.dev.servers import serve
from service.dev.standins import StandIns, WebhookReceiver
from tests.support.fakes import RecordingTransport
from tests.support.project import WEBHOOK_SECRET, make_settings, project_flows

RESULTS = "results"


@dataclass
class Stack:
    client: httpx.Client
    functions: StandIns
    webhook: WebhookReceiver
    webhook_url: str
    transport: RecordingTransport

    def push(self, data: Any, attributes: dict[str, str] | None = None) -> httpx.Response:
        if isinstance(data, dict):
            data = json.dumps(data).encode()
        if isinstance(data, bytes):
            data = base64.b64encode(data).decode()
        envelope = {
            "message": {"data": data, "attributes": attributes or {}, "messageId": "m-1"},
            "subscription": "projects/p/subscriptions/s",
        }
        return self.client.post("/pubsub/push", json=envelope)

    def request(self, **overrides: Any) -> dict[str, Any]:
        message = {
            "execution_id": str(uuid.uuid4()),
            "flow": "ml-orchestration",
            "input": {
                "user_id": "u1",
                "session_id": "s1",
                "create_user_embedding": False,
                "process_profession_orchestrator": True,
                "process_vacancy_orchestrator": True,
            },
            "webhook_url": self.webhook_url,
            "requested_at": "2026-11-25T10:00:00Z",
        }
        message.update(overrides)
        return message

    def results(self) -> list[tuple[dict[str, Any], dict[str, str]]]:
        return self.transport.on(RESULTS)

    def document(self, execution_id: str) -> dict[str, Any]:
        """The whole execution document (the default flow delivers its `result` only)."""
        document: dict[str, Any] = self.client.get(f"/executions/{execution_id}").json()
        return document


WEBHOOK_MAX_BYTES = 200_000


@pytest.fixture
def stack() -> Iterator[Stack]:
    functions = StandIns(delay_s=0.05)
    webhook = WebhookReceiver(WEBHOOK_SECRET)
    transport = RecordingTransport()
    with serve(functions.app()) as functions_url, serve(webhook.app()) as webhook_url:
        flows = project_flows(functions_url, whole_document=True)
        settings = make_settings(
            result_topic=RESULTS,
            webhook_allow_private_networks=True,
            webhook_max_bytes=WEBHOOK_MAX_BYTES,
            public_url="https://orchestrator.example",
        )
        app = create_app(settings, flows, transport)
        with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield Stack(client, functions, webhook, f"{webhook_url}/hook", transport)


def test_an_execution_runs_inside_the_push_and_is_acked_when_delivered(stack: Stack) -> None:
    message = stack.request()
    response = stack.push(message)
    assert response.status_code == 204
    # Everything happened before the answer: calls, webhook, result topic.
    assert [
        len(stack.functions.called(p))
        for p in (
            "/create-user-embeddings",
            "/profession-orchestrator",
            "/match-candidato",
            "/match-analysis-user-vacancy",
        )
    ] == [0, 1, 1, 3]
    [delivery] = stack.webhook.deliveries
    assert delivery.verified
    assert delivery.headers["webhook-id"] == message["execution_id"]
    document = json.loads(delivery.body)
    assert document["status"] == "succeeded"
    assert [v["vacancy_id"] for v in document["result"]["vacancies"]] == ["v1", "v2", "v3"]
    assert document["status_url"] == (
        f"https://orchestrator.example/executions/{message['execution_id']}"
    )
    [(published, attributes)] = stack.results()
    assert published == document
    assert attributes == {
        "execution_id": message["execution_id"],
        "flow": "ml-orchestration",
        "status": "succeeded",
    }
    whole = stack.document(message["execution_id"])
    assert whole["steps"]["create_user_embeddings"]["status"] == "skipped"
    summary = {key: value for key, value in document.items() if key != "status_url"}
    assert {key: whole[key] for key in summary} == summary


def test_a_duplicate_of_a_finished_execution_runs_nothing(stack: Stack) -> None:
    message = stack.request()
    assert stack.push(message).status_code == 204
    calls = len(stack.functions.calls)
    assert stack.push(message).status_code == 204
    assert len(stack.functions.calls) == calls
    assert len(stack.webhook.deliveries) == 1
    assert len(stack.results()) == 1


def test_a_duplicate_of_a_running_execution_is_nacked(stack: Stack) -> None:
    stack.functions.delay_s = 0.5
    message = stack.request()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(stack.push, message)
        while not stack.functions.calls:
            time.sleep(0.005)
        second = stack.push(message)
        assert second.status_code == 409
        assert first.result().status_code == 204
    assert len(stack.webhook.deliveries) == 1


POISON = [
    ("not base64", "%%%not-base64%%%", "message.data: not valid base64"),
    ("not JSON", b"\xff\xfe not json", "message.data: not JSON"),
    ("not an object", b"[1, 2, 3]", "message.data"),
    ("missing fields", {"flow": "ml-orchestration"}, "message.data.input: Field required"),
    ("nested too deep", b"[" * 100_000 + b"]" * 100_000, "message.data: nested deeper than 64"),
    ("NaN", b'{"flow": "ml-orchestration", "input": {"x": NaN}}', "NaN is not JSON"),
    ("too large a number", b'{"flow": "f", "input": {"x": 1e999}}', "too large for a double"),
    ("a 5,000-digit integer", b'{"input": {"x": ' + b"9" * 5000 + b"}}", "integer string"),
    (
        "a time without a zone",
        {"flow": "ml-orchestration", "input": {}, "requested_at": "2026-11-25T10:00:00"},
        "message.data.requested_at: Input should have timezone info",
    ),
]


@pytest.mark.parametrize(("case", "data", "reason"), POISON, ids=[case[0] for case in POISON])
def test_poison_messages_are_acked_reported_and_harmless(
    stack: Stack, case: str, data: Any, reason: str
) -> None:
    assert stack.push(data).status_code == 204
    [(rejected, attributes)] = stack.results()
    assert rejected["status"] == "rejected"
    assert reason in rejected["error"]
    assert attributes["status"] == "rejected"
    assert stack.functions.calls == []
    # The service keeps working.
    assert stack.push(stack.request()).status_code == 204
    assert len(stack.webhook.deliveries) == 1


def test_an_unknown_flow_or_invalid_input_is_rejected_and_readable(stack: Stack) -> None:
    unknown = stack.request(flow="no-such-flow")
    invalid = stack.request(input={"session_id": "s"})
    assert stack.push(unknown).status_code == 204
    assert stack.push(invalid).status_code == 204
    errors = [document["error"] for document, _ in stack.results()]
    assert errors == ["flow: unknown flow 'no-such-flow'", "input.user_id: Field required"]
    status = stack.client.get(f"/executions/{invalid['execution_id']}").json()
    assert status["status"] == "rejected"
    assert stack.functions.calls == []


def test_a_bad_copy_does_not_overwrite_a_finished_execution(stack: Stack) -> None:
    message = stack.request()
    assert stack.push(message).status_code == 204
    assert stack.push({**message, "input": {"session_id": "s"}}).status_code == 204
    status = stack.client.get(f"/executions/{message['execution_id']}").json()
    assert status["status"] == "succeeded"


def test_a_direct_producer_needs_only_flow_and_input(stack: Stack) -> None:
    """The message id stands for the execution id (so a redelivery runs nothing)."""
    message = {"flow": "ml-orchestration", "input": stack.request()["input"]}
    envelope = {
        "message": {
            "data": base64.b64encode(json.dumps(message).encode()).decode(),
            "messageId": "4711",
            "publishTime": "2026-11-26T09:30:00.123Z",
        },
        "subscription": "projects/p/subscriptions/s",
    }
    assert stack.client.post("/pubsub/push", json=envelope).status_code == 204
    calls = len(stack.functions.calls)
    assert stack.client.post("/pubsub/push", json=envelope).status_code == 204
    assert len(stack.functions.calls) == calls
    [(document, attributes)] = stack.results()
    assert document["execution_id"] == attributes["execution_id"] == "4711"
    assert document["status"] == "succeeded"
    assert document["requested_at"] == "2026-11-26T09:30:00.123000Z"


def test_a_malformed_envelope_is_acked(stack: Stack) -> None:
    response = stack.client.post("/pubsub/push", content=b'{"message": 5}')
    assert response.status_code == 204
    [(rejected, _)] = stack.results()
    assert rejected["error"].startswith("push envelope: message")


def test_an_undelivered_webhook_nacks_and_the_redelivery_does_not_rerun(stack: Stack) -> None:
    stack.webhook.script = [500] * 4
    message = stack.request()
    assert stack.push(message).status_code == 503
    calls = len(stack.functions.calls)
    assert len(stack.webhook.deliveries) == 4
    assert len(stack.results()) == 1  # the topic is not held back by the webhook
    # Pub/Sub redelivers: the stored result is delivered, the flow does not run again.
    assert stack.push(message).status_code == 204
    assert len(stack.functions.calls) == calls
    assert len(stack.webhook.deliveries) == 5
    ids = {delivery.headers["webhook-id"] for delivery in stack.webhook.deliveries}
    assert ids == {message["execution_id"]}
    assert len(stack.results()) == 2  # at least once: consumers dedupe by execution_id


def test_a_gone_webhook_is_not_retried(stack: Stack) -> None:
    stack.webhook.script = [410]
    assert stack.push(stack.request()).status_code == 204
    assert len(stack.webhook.deliveries) == 1
    assert len(stack.results()) == 1


def test_a_failed_step_is_a_result_not_a_redelivery(stack: Stack) -> None:
    stack.functions.script["/match-candidato"] = [400]
    message = stack.request()
    assert stack.push(message).status_code == 204
    [document] = stack.webhook.documents()
    assert document["status"] == "failed" and document["result"] is None
    assert document["error"].startswith("step match_candidato failed: HTTP 400")
    steps = stack.document(message["execution_id"])["steps"]
    assert steps["match_analysis_user_vacancy"]["status"] == "skipped"
    assert steps["profession_orchestrator"]["status"] == "succeeded"


def test_a_result_too_big_for_the_webhook_goes_without_outputs(stack: Stack) -> None:
    stack.functions.padding["/profession-orchestrator"] = WEBHOOK_MAX_BYTES
    message = stack.request()
    assert stack.push(message).status_code == 204
    [delivery] = stack.webhook.deliveries
    assert delivery.verified and len(delivery.body) <= WEBHOOK_MAX_BYTES
    document = json.loads(delivery.body)
    assert document["status"] == "succeeded"
    assert document["outputs"] == "omitted"
    assert document["status_url"] == (
        f"https://orchestrator.example/executions/{message['execution_id']}"
    )
    assert document["result"] is None
    # The topic takes 10 MB: it carries the whole result; the status endpoint has it all.
    [(published, attributes)] = stack.results()
    assert "outputs" not in attributes
    whole = stack.document(message["execution_id"])
    assert published["result"] == whole["result"]
    assert len(whole["result"]["professions"]["padding"]) == WEBHOOK_MAX_BYTES
    assert len(whole["steps"]["profession_orchestrator"]["output"]["padding"]) == WEBHOOK_MAX_BYTES


def test_a_result_too_big_for_a_pubsub_message_is_published_without_outputs(
    stack: Stack,
) -> None:
    """An answer may be 10 MiB; a Pub/Sub message 10 MB, attributes included."""
    stack.functions.padding["/profession-orchestrator"] = 10_200_000  # in the flow's result
    message = stack.request()
    assert stack.push(message).status_code == 204
    [(_, data, attributes)] = [p for p in stack.transport.published if p[0] == RESULTS]
    assert len(data) < 10_000_000
    assert attributes["outputs"] == "omitted"
    assert attributes["status_url"].endswith(f"/executions/{message['execution_id']}")
    document = json.loads(data)
    assert document["outputs"] == "omitted" and document["status"] == "succeeded"
    assert document["result"] is None
    whole = stack.document(message["execution_id"])
    assert len(whole["result"]["professions"]["padding"]) == 10_200_000


def test_a_whole_document_too_big_for_its_channels_goes_without_step_outputs(
    stack: Stack,
) -> None:
    """A flow without `result:` delivers the whole document: outputs are what is dropped."""
    stack.functions.padding["/match-candidato"] = 10_200_000
    message = stack.request(flow="whole-document")
    assert stack.push(message).status_code == 204
    [(published, attributes)] = stack.results()
    [document] = stack.webhook.documents()
    for delivered in (published, document):
        assert delivered["outputs"] == "omitted" and delivered["status"] == "succeeded"
        assert {step["output"] for step in delivered["steps"].values()} == {None}
        assert delivered["input"]["user_id"] == "u1"
    assert attributes["outputs"] == "omitted"
    whole = stack.document(message["execution_id"])
    assert len(whole["steps"]["match_candidato"]["output"]["padding"]) == 10_200_000


def test_the_openapi_document_says_a_direct_producer_needs_only_flow_and_input(
    stack: Stack,
) -> None:
    operation = stack.client.get("/openapi.json").json()["paths"]["/pubsub/push"]["post"]
    envelope = operation["requestBody"]["content"]["application/json"]["schema"]
    data = envelope["properties"]["message"]["properties"]["data"]
    assert data["contentEncoding"] == "base64"
    assert data["contentSchema"]["required"] == ["flow", "input"]


def test_a_replay_goes_only_to_the_webhook_it_names() -> None:
    """Not to DEFAULT_WEBHOOK_URL, nor to the result topic: their receivers act on results."""
    functions, webhook, transport = (
        StandIns(),
        WebhookReceiver(WEBHOOK_SECRET),
        RecordingTransport(),
    )
    with serve(functions.app()) as functions_url, serve(webhook.app()) as webhook_url:
        settings = make_settings(
            result_topic=RESULTS,
            webhook_allow_private_networks=True,
            default_webhook_url=f"{webhook_url}/hook",
        )
        app = create_app(settings, project_flows(functions_url), transport)
        with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            stack = Stack(client, functions, webhook, f"{webhook_url}/hook", transport)
            plain = stack.request(webhook_url=None)
            assert stack.push(plain).status_code == 204
            assert len(webhook.deliveries) == 1 and len(stack.results()) == 1  # the default's
            quiet = stack.request(webhook_url=None, replay_of=plain["execution_id"])
            assert stack.push(quiet).status_code == 204
            assert stack.document(quiet["execution_id"])["status"] == "succeeded"
            told = stack.request(replay_of=plain["execution_id"], execution_id=str(uuid.uuid4()))
            assert stack.push(told).status_code == 204
            assert len(webhook.deliveries) == 2 and len(stack.results()) == 1
            assert webhook.deliveries[1].headers["webhook-id"] == told["execution_id"]

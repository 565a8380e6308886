"""POST /pubsub/events/{flow}/{trigger}: flows started by events, on one instance (the
in-process transport, memory store) on loopback, calling the stand-ins over HTTP.
The same on the Pub/Sub emulator: tests/system/test_triggers.py."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.backends.memory import MemoryStore
from service.bounds import MAX_EVENT_PUSH_BYTES, MAX_PAYLOAD_BYTES
from service.dev.servers import serve
from service.dev.standins import StandIns
from service.engine.triggers import execution_id
from service.settings import PROJECT_FLOWS_DIR
from service.telemetry import MESSAGE_ATTRIBUTE
from tests.support.fakes import RecordingTransport
from tests.support.project import make_settings
from tests.worker.test_waits import Stack, running

EXPORTS = """
input:
  user_id: {type: string, required: true, max_length: 64}
  source: {type: string, default: none}
steps:
  match:
    call: ${env.DEFAULT_MATCH_CANDIDATO_URL}
    body: {user_id: "${input.user_id}"}
result:
  user_id: ${input.user_id}
  source: ${input.source}
triggers:
  - name: landed
    topic: exports
    when: >-
      ${event.attributes.eventType == "OBJECT_FINALIZE"
        && event.attributes.objectId.endsWith(".json")}
    input:
      user_id: ${event.data.metadata.user_id}
      source: '${"gs://" + event.attributes.bucketId + "/" + event.attributes.objectId}'
  - name: audit
    topic: exports
    input: {user_id: audit, source: "${event.attributes.objectId}"}
  - name: lines
    topic: projects/data-team-1/topics/user-lines
    input: {user_id: "${event.data}", source: "${event.message_id}"}
  - name: whole
    topic: exports
    input: {user_id: whole, data: "${event.data}"}
"""


def notification(
    user_id: Any = "u-7", name: str = "exports/u-7.json", event: str = "OBJECT_FINALIZE"
) -> tuple[bytes, dict[str, str]]:
    """A Cloud Storage notification (payload format JSON_API_V1) of object `name`."""
    metadata = {} if user_id is None else {"user_id": user_id}
    data = {"kind": "storage#object", "bucket": "bucket", "name": name, "metadata": metadata}
    attributes = {
        "eventType": event,
        "bucketId": "bucket",
        "objectId": name,
        "objectGeneration": "1733212800000000",
        "payloadFormat": "JSON_API_V1",
        "notificationConfig": "projects/_/buckets/bucket/notificationConfigs/1",
    }
    return json.dumps(data).encode(), attributes


def envelope(data: bytes, attributes: dict[str, str], message_id: str = "m-1") -> dict[str, Any]:
    message = {
        "data": base64.b64encode(data).decode(),
        "attributes": attributes,
        "messageId": message_id,
        "publishTime": "2026-12-03T08:00:00.000Z",
    }
    return {"message": message, "subscription": "projects/p/subscriptions/orchestrator-trigger"}


def event(client: httpx.Client, trigger: str, body: Any) -> httpx.Response:
    path = f"/pubsub/events/exports/{trigger}"
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"content-type": "application/json"})
    return client.post(path, json=body)


def outcomes(client: httpx.Client) -> dict[str, float]:
    """orchestrator_trigger_total by its labels, as /metrics shows them."""
    counted = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("orchestrator_trigger_total{"):
            labels, value = line.removeprefix("orchestrator_trigger_total").rsplit(" ", 1)
            counted[labels] = float(value)
    return counted


def counted(trigger: str, outcome: str, flow: str = "exports") -> str:
    return f'{{flow="{flow}",outcome="{outcome}",trigger="{trigger}"}}'


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Stack]:
    with running(monkeypatch, tmp_path, {"exports": EXPORTS}) as started:
        yield started


def test_a_storage_notification_starts_one_execution_with_the_mapped_input(stack: Stack) -> None:
    response = event(stack.client, "landed", envelope(*notification()))
    assert response.status_code == 204, response.text
    named = execution_id("exports", "landed", "m-1")
    done = stack.reaches(named, "succeeded")
    assert done["input"] == {"user_id": "u-7", "source": "gs://bucket/exports/u-7.json"}
    assert done["trigger"] == "landed"
    assert done["result"] == done["input"]
    assert stack.calls("/match-candidato") == [{"user_id": "u-7"}]
    listed = stack.client.get("/executions", params={"flow": "exports"}).json()["executions"]
    assert [(e["execution_id"], e["trigger"]) for e in listed] == [(named, "landed")]
    assert outcomes(stack.client) == {counted("landed", "started"): 1}


def test_redeliveries_of_an_event_start_one_execution(stack: Stack) -> None:
    """Three copies at once, then two after it ran: one execution, one call."""
    body = envelope(*notification())
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: event(stack.client, "landed", body), range(3)))
    named = execution_id("exports", "landed", "m-1")
    stack.reaches(named, "succeeded")
    answers += [event(stack.client, "landed", body) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [204] * 5
    time.sleep(1.5)  # past the in-process transport's first redelivery of a nacked copy
    assert len(stack.calls("/match-candidato")) == 1
    listed = stack.client.get("/executions", params={"flow": "exports"}).json()["executions"]
    assert [e["execution_id"] for e in listed] == [named]
    assert stack.document(named)["run"] == 1


@pytest.mark.parametrize(
    "filtered",
    [notification(event="OBJECT_DELETE"), notification(name="exports/u-7.csv")],
    ids=["deleted", "not json"],
)
def test_an_event_its_when_refuses_is_acked_and_starts_nothing(
    stack: Stack, filtered: tuple[bytes, dict[str, str]]
) -> None:
    assert event(stack.client, "landed", envelope(*filtered)).status_code == 204
    named = execution_id("exports", "landed", "m-1")
    assert stack.client.get(f"/executions/{named}").status_code == 404
    assert outcomes(stack.client) == {counted("landed", "filtered"): 1}
    assert stack.calls("/match-candidato") == []


@pytest.mark.parametrize(
    ("misfit", "reason"),
    [
        (notification(user_id="u" * 65), "input.user_id: String should have at most 64"),
        (notification(user_id=7), "input.user_id: Input should be a valid string"),
        (notification(user_id=None), "triggers.0.input.user_id: ${event.data.metadata.user_id}"),
        ((notification()[0], {}), 'triggers.0.when: ${event.attributes.eventType == "OBJECT'),
    ],
    ids=["too long", "not a string", "absent", "when reads what is not there"],
)
def test_a_misfit_event_is_acked_as_one_rejected_execution_naming_the_field(
    stack: Stack, misfit: tuple[bytes, dict[str, str]], reason: str
) -> None:
    for _ in range(2):  # a redelivery records the same rejection
        assert event(stack.client, "landed", envelope(*misfit)).status_code == 204
    named = execution_id("exports", "landed", "m-1")
    rejected = stack.reaches(named, "rejected")
    assert reason in rejected["error"]
    assert rejected["flow"] == "exports"
    listed = stack.client.get("/executions", params={"flow": "exports"}).json()["executions"]
    assert [e["execution_id"] for e in listed] == [named]
    assert outcomes(stack.client) == {counted("landed", "rejected"): 2}
    assert stack.calls("/match-candidato") == []


def test_data_that_is_not_json_is_read_as_text(stack: Stack) -> None:
    body = envelope(b"user-42", {}, message_id="m-9")
    assert event(stack.client, "lines", body).status_code == 204
    done = stack.reaches(execution_id("exports", "lines", "m-9"), "succeeded")
    assert done["input"] == {"user_id": "user-42", "source": "m-9"}


def test_an_event_as_large_as_pub_sub_takes_starts_its_execution(stack: Stack) -> None:
    """10 MB of data, of which the input takes a field; the whole of it would not fit a
    request message, and is refused naming the input."""
    data, attributes = notification()
    padded = {**json.loads(data), "rows": "r" * (MAX_PAYLOAD_BYTES - len(data) - 20)}
    large = json.dumps(padded).encode()
    assert MAX_PAYLOAD_BYTES - 100 < len(large) <= MAX_PAYLOAD_BYTES
    assert event(stack.client, "landed", envelope(large, attributes)).status_code == 204
    done = stack.reaches(execution_id("exports", "landed", "m-1"), "succeeded")
    assert done["input"]["user_id"] == "u-7"
    assert event(stack.client, "whole", envelope(large, attributes)).status_code == 204
    rejected = stack.reaches(execution_id("exports", "whole", "m-1"), "rejected")
    assert re.fullmatch(r"input: 100\d{5} bytes of JSON, at most 1000000", rejected["error"])


def hostile() -> dict[str, Any]:
    """Envelopes no redelivery can make valid, by what is wrong with them."""
    data, attributes = notification()
    good = envelope(data, attributes)
    return {
        "data not base64": {**good, "message": {**good["message"], "data": "!!not base64!!"}},
        "no message id": {"message": {"data": good["message"]["data"]}},
        "no message": {"subscription": "s"},
        "not an object": [1, 2],
        "not json": b"\xff{",
        "over the bound": b'{"message": {"data": "' + b"A" * MAX_EVENT_PUSH_BYTES + b'"}}',
        "deep": b'{"message": ' * 5000,
    }


def test_hostile_envelopes_are_acked_and_reported_never_a_500(stack: Stack) -> None:
    for case, body in hostile().items():
        response = event(stack.client, "landed", body)
        assert response.status_code == 204, (case, response.status_code, response.text)
    rejected = stack.client.get("/executions", params={"status": "rejected"}).json()
    errors = {e["error"] for e in rejected["executions"]}
    assert any("message.data: not valid base64" in error for error in errors), errors
    assert stack.calls("/match-candidato") == []
    # And the endpoint still works.
    assert event(stack.client, "landed", envelope(*notification(), "m-2")).status_code == 204
    stack.reaches(execution_id("exports", "landed", "m-2"), "succeeded")


def test_an_event_for_a_trigger_no_flow_declares_is_acked_and_counted(stack: Stack) -> None:
    body = envelope(*notification())
    for path in ("/pubsub/events/exports/gone", "/pubsub/events/nowhere/landed"):
        assert stack.client.post(path, json=body).status_code == 204
    assert outcomes(stack.client) == {counted("unknown", "unknown", flow="unknown"): 2}
    assert stack.client.get("/executions").json()["executions"] == []


def test_an_event_the_broker_cannot_take_is_nacked_and_leaves_nothing_queued(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in StandIns().env("https://fn.example").items():
        monkeypatch.setenv(name, value)
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "exports.yaml").write_text(EXPORTS)
    transport = RecordingTransport()
    transport.down = True
    settings = make_settings(flows_dir=(PROJECT_FLOWS_DIR, folder))
    app = create_app(settings, transport=transport, store=MemoryStore())
    traced = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    data, attributes = notification()
    body = envelope(data, attributes | {MESSAGE_ATTRIBUTE: traced})
    named = execution_id("exports", "landed", "m-1")
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert event(client, "landed", body).status_code == 503  # redelivered later
        assert client.get(f"/executions/{named}").status_code == 404
        transport.down = False
        assert event(client, "landed", body).status_code == 204
        assert client.get(f"/executions/{named}").json()["status"] == "queued"
    [(request, carried)] = transport.on(settings.orchestration_topic)
    assert request["execution_id"] == named
    assert request["trigger"] == "landed"
    assert request["input"] == {"user_id": "u-7", "source": "gs://bucket/exports/u-7.json"}
    assert carried[MESSAGE_ATTRIBUTE] == traced  # the execution runs in the event's trace


async def test_the_embedded_transport_delivers_a_published_event_to_each_trigger_of_its_topic(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "exports.yaml").write_text(EXPORTS)
    functions = StandIns()
    with serve(functions.app()) as functions_url:
        for name, value in functions.env(functions_url).items():
            monkeypatch.setenv(name, value)
        store = MemoryStore()
        app = create_app(make_settings(flows_dir=(PROJECT_FLOWS_DIR, folder)), store=store)
        async with app.router.lifespan_context(app):
            transport = app.state.components.transport
            exported = await transport.publish("exports", *notification())
            line = await transport.publish("user-lines", b"user-42", {})
            started = {
                execution_id("exports", "landed", exported): "u-7",
                execution_id("exports", "audit", exported): "audit",
                execution_id("exports", "whole", exported): "whole",
                execution_id("exports", "lines", line): "user-42",
            }
            for named, user_id in started.items():
                for _ in range(500):
                    done = await store.get(named)
                    if done is not None and done.status == "succeeded":
                        break
                    await asyncio.sleep(0.01)
                assert done is not None and done.status == "succeeded", named
                assert done.input["user_id"] == user_id
    called = sorted(call.body["user_id"] for call in functions.calls)
    assert called == ["audit", "u-7", "user-42", "whole"]

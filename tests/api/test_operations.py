"""The operators' API through the real app on loopback: list, cancel, re-drive, and who
may operate. The stand-in functions and the webhook receiver are real HTTP servers."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from service.app import create_app
from service.backends.memory import MemoryStore
from service.dev.servers import serve
from service.dev.standins import StandIns, WebhookReceiver
from service.execution import Execution, ExecutionStatus, StepResult, StepStatus
from tests.support.fakes import RecordingTransport
from tests.support.identity import Identity, certs_server
from tests.support.project import WEBHOOK_SECRET, full_seed, make_settings, project_flows
from tests.support.waits import until

FLOWS = project_flows()
SERVICE_URL = "https://orchestrator.example"
START = datetime(2026, 11, 26, 9, tzinfo=UTC)


def ended(execution_id: str, status: ExecutionStatus, requested_at: datetime) -> Execution:
    """An execution of the default flow that ended with `status` (an error unless it succeeded)."""
    execution = Execution(
        execution_id=execution_id,
        flow="ml-orchestration",
        status=ExecutionStatus.RUNNING,
        input={"user_id": "u", "session_id": "s", "secret_input": "not in listings"},
        requested_at=requested_at,
    )
    execution.finish(status, None if status == ExecutionStatus.SUCCEEDED else "HTTP 503")
    return execution


def executions() -> list[Execution]:
    """Twelve ended executions, a minute apart: failed, succeeded, partial, failed, ..."""
    statuses = [ExecutionStatus.FAILED, ExecutionStatus.SUCCEEDED, ExecutionStatus.PARTIAL]
    return [ended(f"e-{n:02}", statuses[n % 3], START + timedelta(minutes=n)) for n in range(12)]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    store = MemoryStore()
    for execution in executions():
        asyncio.run(store.save(execution, delivered=True))
    app = create_app(make_settings(), FLOWS, RecordingTransport(), store)
    with serve(app) as url, httpx.Client(base_url=url) as test_client:
        yield test_client


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [summary["execution_id"] for summary in response.json()["executions"]]


def test_executions_are_listed_newest_first_as_summaries(client: httpx.Client) -> None:
    response = client.get("/executions", params={"limit": 3})
    assert ids(response) == ["e-11", "e-10", "e-09"]
    summary = response.json()["executions"][0]
    assert set(summary) == {
        "execution_id",
        "flow",
        "status",
        "run",
        "requested_at",
        "started_at",
        "finished_at",
        "duration_ms",
        "error",
        "wake_at",
        "flow_version",
        "parent",  # a child execution's (null here)
        "replay_of",  # a replay's
        "trigger",  # a triggered execution's
    }
    assert "secret_input" not in response.text


def test_filters_combine_and_pages_follow_each_other(client: httpx.Client) -> None:
    params: dict[str, Any] = {
        "status": ["failed", "partial"],
        "flow": "ml-orchestration",
        "since": (START + timedelta(minutes=2)).isoformat(),
        "until": (START + timedelta(minutes=9)).isoformat(),
        "limit": 2,
    }
    seen: list[str] = []
    while True:
        response = client.get("/executions", params=params)
        seen += ids(response)
        token = response.json()["next_page_token"]
        if token is None:
            break
        params["page_token"] = token
    assert seen == ["e-08", "e-06", "e-05", "e-03", "e-02"]
    assert ids(client.get("/executions", params={"flow": "other"})) == []


BAD = {
    "unknown status": ({"status": "exploded"}, "query.status.0"),
    "limit over 1000": ({"limit": 1001}, "query.limit"),
    "limit zero": ({"limit": 0}, "query.limit"),
    "a time without a zone": ({"since": "2026-11-26T09:00:00"}, "query.since"),
    "a forged page token": ({"page_token": "bm9wZQ"}, "page_token"),
}


@pytest.mark.parametrize(("params", "field"), BAD.values(), ids=BAD.keys())
def test_a_bad_parameter_is_a_422_naming_it(
    client: httpx.Client, params: dict[str, Any], field: str
) -> None:
    response = client.get("/executions", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert [error["field"] for error in response.json()["errors"]] == [field]


@pytest.fixture(scope="module")
def certs_url(identity: Identity) -> Iterator[str]:
    app, _ = certs_server(identity)
    with serve(app) as url:
        yield f"{url}/oauth2/v1/certs"


def test_operations_are_closed_in_production_until_admin_emails_is_set(
    certs_url: str, identity: Identity
) -> None:
    settings = make_settings(push_auth_audience=SERVICE_URL, push_auth_certs_url=certs_url)
    with serve(create_app(settings, FLOWS, RecordingTransport())) as url:
        token = {"authorization": f"Bearer {identity.token(SERVICE_URL)}"}
        response = httpx.get(f"{url}/executions", headers=token)
    assert response.status_code == 403
    assert "ADMIN_EMAILS" in response.json()["detail"]


def test_admin_emails_let_in_exactly_their_verified_google_identities(
    certs_url: str, identity: Identity
) -> None:
    settings = make_settings(
        push_auth_audience=SERVICE_URL,
        push_auth_certs_url=certs_url,
        admin_emails="Ops@Example.com, oncall@example.com",
    )
    cases = {
        "no token": (None, 401),
        "another account": (identity.token(SERVICE_URL, email="intruder@example.com"), 403),
        "unverified": (
            identity.token(SERVICE_URL, email="ops@example.com", email_verified=False),
            403,
        ),
        "another audience": (
            identity.token("https://elsewhere.example", email="ops@example.com"),
            401,
        ),
        "an operator": (identity.token(SERVICE_URL, email="ops@example.com"), 200),
        "another operator": (identity.token(SERVICE_URL, email="oncall@example.com"), 200),
        "an operator's capitals": (identity.token(SERVICE_URL, email="OPS@example.com"), 200),
    }
    answers = {}
    with serve(create_app(settings, FLOWS, RecordingTransport())) as url:
        for case, (token, _) in cases.items():
            headers = {"authorization": f"Bearer {token}"} if token else {}
            answers[case] = httpx.get(f"{url}/executions", headers=headers).status_code
    assert answers == {case: status for case, (_, status) in cases.items()}


def test_operations_are_open_where_push_auth_is_off(client: httpx.Client) -> None:
    """Local development: no token needed (and the push endpoint needs none either)."""
    assert client.get("/executions").status_code == 200


def test_admin_emails_need_the_service_url_as_the_tokens_audience() -> None:
    with pytest.raises(ValidationError, match="PUSH_AUTH_AUDIENCE or PUBLIC_URL"):
        make_settings(admin_emails="ops@example.com")


@dataclass
class Live:
    """The service with the in-process transport, stand-in functions and a webhook.

    Executions run `whole-document` (the default flow without `result:`), so that each
    run's delivered document shows its steps.
    """

    client: httpx.Client
    functions: StandIns
    webhook: WebhookReceiver
    webhook_url: str

    def start(self, **overrides: Any) -> str:
        body = full_seed(
            user_id=f"u-{uuid.uuid4().hex[:6]}",
            webhook_url=self.webhook_url,
            flow="whole-document",
            **overrides,
        )
        response = self.client.post("/orchestrate", json=body)
        assert response.status_code == 202, response.text
        execution_id: str = response.json()["execution_id"]
        return execution_id

    def results(self, execution_id: str, count: int = 1, timeout: float = 20) -> list[Any]:
        """The documents delivered for `execution_id`, once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                json.loads(d.body)
                for d in self.webhook.deliveries
                if json.loads(d.body)["execution_id"] == execution_id
            ]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"{len(found)} results for {execution_id}"
            time.sleep(0.02)

    def calls(self, user_id: str) -> Counter[str]:
        return Counter(c.path for c in self.functions.calls if c.body["user_id"] == user_id)

    def get(self, execution_id: str) -> dict[str, Any]:
        document: dict[str, Any] = self.client.get(f"/executions/{execution_id}").json()
        return document


@pytest.fixture
def live() -> Iterator[Live]:
    functions = StandIns(delay_s=0.02)
    webhook = WebhookReceiver(WEBHOOK_SECRET)
    with serve(functions.app()) as functions_url, serve(webhook.app()) as webhook_url:
        settings = make_settings(webhook_allow_private_networks=True)
        app = create_app(settings, project_flows(functions_url, whole_document=True))
        with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield Live(client, functions, webhook, f"{webhook_url}/hook")


@pytest.mark.timing
def test_a_running_execution_is_cancelled_within_two_seconds(live: Live) -> None:
    held = live.functions.gates["/create-user-embeddings"] = threading.Event()
    execution_id = live.start()
    user = live.get(execution_id)["input"]["user_id"]
    until(lambda: live.calls(user))
    asked = time.monotonic()
    response = live.client.post(f"/executions/{execution_id}/cancel")
    assert response.status_code == 202
    assert response.json() == {"execution_id": execution_id, "status": "cancelling"}
    [document] = live.results(execution_id, timeout=5)
    took = time.monotonic() - asked
    print(f"\ncancel of a running execution: result delivered {took:.2f} s after the request")
    assert took < 2
    assert document["status"] == "cancelled"
    assert document["error"] == "cancelled by an operator"
    assert document["steps"]["create_user_embeddings"]["status"] == "cancelled"
    time.sleep(0.5)
    assert live.calls(user) == {"/create-user-embeddings": 1}  # no new call started
    assert len(live.results(execution_id)) == 1
    again = live.client.post(f"/executions/{execution_id}/cancel")
    assert again.status_code == 409
    assert again.json()["errors"] == [
        {"field": "status", "reason": "the execution has ended (cancelled)"}
    ]
    held.set()  # the abandoned call's handler may end now


def test_a_queued_execution_is_cancelled_at_once_and_delivered_when_its_message_arrives() -> None:
    """A recording transport holds the message back; it is pushed by hand afterwards."""
    functions = StandIns()
    webhook = WebhookReceiver(WEBHOOK_SECRET)
    transport = RecordingTransport()
    with serve(functions.app()) as functions_url, serve(webhook.app()) as webhook_url:
        settings = make_settings(webhook_allow_private_networks=True)
        app = create_app(settings, project_flows(functions_url), transport)
        with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            body = {"user_id": "u", "session_id": "s", "webhook_url": f"{webhook_url}/hook"}
            execution_id = client.post("/orchestrate", json=body).json()["execution_id"]
            response = client.post(f"/executions/{execution_id}/cancel")
            assert response.json() == {"execution_id": execution_id, "status": "cancelled"}
            assert client.get(f"/executions/{execution_id}").json()["status"] == "cancelled"
            [(_, data, _)] = transport.published
            envelope = {"message": {"data": base64.b64encode(data).decode(), "messageId": "1"}}
            assert client.post("/pubsub/push", json=envelope).status_code == 204
    assert functions.calls == []
    [delivery] = webhook.deliveries
    assert json.loads(delivery.body)["status"] == "cancelled"


def test_a_re_drive_after_a_permanent_4xx_calls_only_the_failed_work(live: Live) -> None:
    live.functions.script["/match-candidato"] = [400]
    execution_id = live.start()
    [first] = live.results(execution_id)
    assert first["status"] == "failed"
    user = first["input"]["user_id"]
    response = live.client.post(f"/executions/{execution_id}/redrive")
    assert response.status_code == 202
    assert response.json()["run"] == 2
    second = live.results(execution_id, count=2)[1]
    assert second["status"] == "succeeded" and second["run"] == 2
    assert live.calls(user) == {
        "/create-user-embeddings": 1,
        "/profession-orchestrator": 1,
        "/match-candidato": 2,
        "/match-analysis-user-vacancy": 3,
    }
    assert second["steps"]["profession_orchestrator"] == first["steps"]["profession_orchestrator"]
    ids = [d.headers["webhook-id"] for d in live.webhook.deliveries]
    assert ids == [execution_id, f"{execution_id}~run2"]


def test_a_re_driven_for_each_calls_only_its_failed_items(live: Live) -> None:
    live.functions.script["/match-analysis-user-vacancy"] = [200, 400]  # one of three fails
    execution_id = live.start()
    [first] = live.results(execution_id)
    assert first["status"] == "partial"
    items = first["steps"]["match_analysis_user_vacancy"]["items"]
    assert sorted(item["status"] for item in items) == ["failed", "succeeded", "succeeded"]
    assert all(item["started_at"] and item["finished_at"] for item in items)
    user = first["input"]["user_id"]
    assert live.client.post(f"/executions/{execution_id}/redrive").status_code == 202
    second = live.results(execution_id, count=2)[1]
    assert second["status"] == "succeeded"
    assert live.calls(user)["/match-analysis-user-vacancy"] == 4  # 3, then the failed one
    outputs = second["steps"]["match_analysis_user_vacancy"]["output"]
    assert [output["vacancy_id"] for output in outputs] == ["v1", "v2", "v3"]


def test_steps_record_when_they_started_and_finished(live: Live) -> None:
    [document] = live.results(live.start())
    steps = document["steps"]
    for step in steps.values():
        assert step["started_at"] <= step["finished_at"]
    assert steps["create_user_embeddings"]["finished_at"] <= steps["match_candidato"]["started_at"]


def test_re_drive_and_cancel_answer_409_or_404_by_status(live: Live) -> None:
    succeeded = live.start()
    live.results(succeeded)
    unknown = "no-such-execution"
    assert live.client.post(f"/executions/{succeeded}/redrive").status_code == 409
    assert live.client.post(f"/executions/{succeeded}/cancel").status_code == 409
    assert live.client.post(f"/executions/{unknown}/redrive").status_code == 404
    assert live.client.post(f"/executions/{unknown}/cancel").status_code == 404
    held = live.functions.gates["/create-user-embeddings"] = threading.Event()
    running = live.start()
    user = live.get(running)["input"]["user_id"]
    until(lambda: live.calls(user))  # it runs: its first call is held
    conflict = live.client.post(f"/executions/{running}/redrive")
    held.set()
    assert conflict.status_code == 409
    assert conflict.json()["detail"] == "status: a running execution is not re-driven"


def test_bulk_re_drive_after_an_outage_runs_every_failure_once(live: Live) -> None:
    live.functions.script["/match-candidato"] = [503] * 15  # 5 executions x 3 attempts
    failed = [live.start() for _ in range(5)]
    for execution_id in failed:
        assert live.results(execution_id)[0]["status"] == "failed"
    response = live.client.post("/executions/redrive", json={"status": ["failed"], "limit": 100})
    assert response.status_code == 202
    assert response.json()["count"] == 5
    assert sorted(response.json()["execution_ids"]) == sorted(failed)
    again = live.client.post("/executions/redrive", json={"status": ["failed"]})
    assert again.json() == {"count": 0, "execution_ids": []}  # nothing is queued twice
    for execution_id in failed:
        assert live.results(execution_id, count=2)[1]["status"] == "succeeded"
    refused = live.client.post("/executions/redrive", json={"status": ["succeeded"]})
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "body.status"


@pytest.mark.parametrize("kind", ["memory", pytest.param("firestore", marks=pytest.mark.emulator)])
def test_bulk_re_drive_is_bounded_by_its_limit(kind: str, request: pytest.FixtureRequest) -> None:
    """200 failures, a limit of 150: the newest 150 are queued and published, once."""
    memory = MemoryStore()

    def make_store() -> Any:
        """The store under test; a Firestore client belongs to the event loop that uses it."""
        if kind == "memory":
            return memory
        request.getfixturevalue("firestore_emulator")
        from service.backends.firestore import FirestoreStore

        return FirestoreStore(project, "executions", timedelta(days=1))

    project = f"bulk-{uuid.uuid4().hex[:8]}"
    failures = [
        ended(f"f-{n:03}", ExecutionStatus.FAILED, START + timedelta(seconds=n)) for n in range(200)
    ]

    async def fill() -> None:
        store = make_store()
        await asyncio.gather(*(store.save(e, delivered=True) for e in failures))
        await store.close()

    asyncio.run(fill())
    transport = RecordingTransport()
    with serve(create_app(make_settings(), FLOWS, transport, make_store())) as url:
        started = time.perf_counter()
        response = httpx.post(f"{url}/executions/redrive", json={"limit": 150}, timeout=120)
        took = time.perf_counter() - started
    print(f"\nbulk re-drive on {kind}: 150 executions in {took:.2f} s ({150 / took:.0f}/s)")
    assert response.status_code == 202
    assert response.json()["count"] == 150
    assert response.json()["execution_ids"] == [f"f-{n:03}" for n in range(199, 49, -1)]
    published = [json.loads(data)["execution_id"] for _, data, _ in transport.published]
    assert sorted(published) == sorted(response.json()["execution_ids"])


def test_a_re_drive_the_broker_cannot_take_is_undone() -> None:
    """503 with Retry-After, and the execution stays as it was: it can be re-driven later."""
    store = MemoryStore()
    [failed] = executions()[:1]
    asyncio.run(store.save(failed, delivered=True))
    transport = RecordingTransport()
    transport.down = True
    with serve(create_app(make_settings(), FLOWS, transport, store)) as url:
        refused = httpx.post(f"{url}/executions/{failed.execution_id}/redrive")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        document = httpx.get(f"{url}/executions/{failed.execution_id}").json()
        assert (document["status"], document["run"]) == ("failed", 1)
        transport.down = False
        accepted = httpx.post(f"{url}/executions/{failed.execution_id}/redrive")
        assert accepted.status_code == 202 and accepted.json()["run"] == 2
    [(_, _, attributes)] = transport.published
    attributes.pop("googclient_traceparent")
    assert attributes == {"execution_id": failed.execution_id, "flow": failed.flow, "run": "2"}


def test_a_wake_the_broker_cannot_take_is_a_503_naming_what_was_woken() -> None:
    """Due executions whose resumes the broker refuses: 503 with Retry-After, never a
    200 that says nothing was due; their timers come due again after REWAKE_S."""
    store = MemoryStore()
    for n in range(3):
        waiting = Execution(
            execution_id=f"w-{n}",
            flow="ml-orchestration",
            status=ExecutionStatus.RUNNING,
            input={"user_id": "u"},
        )
        waiting.steps["nap"] = StepResult(
            status=StepStatus.WAITING, wake_at=datetime.now(UTC) - timedelta(seconds=1)
        )
        asyncio.run(store.suspend(waiting))
    transport = RecordingTransport()
    transport.down = True
    with serve(create_app(make_settings(wake_interval_s=0), FLOWS, transport, store)) as url:
        refused = httpx.post(f"{url}/executions/wake")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5", refused.text
        assert "0 of 3" in refused.json()["detail"]
        transport.down = False
        assert httpx.post(f"{url}/executions/wake").json() == {"woken": 0}  # not due yet
    assert transport.published == []
    for n in range(3):
        execution = asyncio.run(store.get(f"w-{n}"))
        assert execution is not None and execution.wake_at is not None
        assert execution.wake_at > datetime.now(UTC)  # due again after REWAKE_S

"""POST /orchestrate and the read endpoints, through the real app on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from service.api.problems import MEDIA_TYPE
from service.app import create_app
from service.dev.servers import serve
from service.messages import SEED_PAYLOAD
from tests.support.fakes import RecordingTransport
from tests.support.project import make_settings, project_flows

FLOWS = project_flows()
SEED = SEED_PAYLOAD
TOPIC = "ml-orchestration-requests"


@pytest.fixture
def transport() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def client(transport: RecordingTransport) -> Iterator[httpx.Client]:
    app = create_app(make_settings(), FLOWS, transport)
    with serve(app) as url, httpx.Client(base_url=url) as test_client:
        yield test_client


def test_the_seed_payload_is_accepted_and_published(
    client: httpx.Client, transport: RecordingTransport
) -> None:
    response = client.post("/orchestrate", json=SEED)
    assert response.status_code == 202
    body = response.json()
    assert body["flow"] == "ml-orchestration"
    assert body["status"] == "accepted"
    assert body["status_url"] == f"{client.base_url}/executions/{body['execution_id']}"
    assert response.headers["location"] == body["status_url"]
    [(message, attributes)] = transport.on(TOPIC)
    assert message["execution_id"] == body["execution_id"]
    assert message["flow"] == "ml-orchestration"
    assert message["input"] == {**SEED, "min_score": None}  # the schema's defaults applied
    assert message["webhook_url"] is None
    assert message["requested_at"]
    trace = attributes.pop("googclient_traceparent")  # the producer's trace (a new one)
    assert attributes == {"execution_id": body["execution_id"], "flow": "ml-orchestration"}
    assert len(trace.split("-")[1]) == 32


def test_an_idempotency_key_fixes_the_execution_id(client: httpx.Client) -> None:
    first = client.post("/orchestrate", json=SEED, headers={"Idempotency-Key": "k-1"})
    again = client.post("/orchestrate", json=SEED, headers={"Idempotency-Key": "k-1"})
    other = client.post("/orchestrate", json=SEED, headers={"Idempotency-Key": "k-2"})
    plain = client.post("/orchestrate", json=SEED)
    assert first.json()["execution_id"] == again.json()["execution_id"]
    assert other.json()["execution_id"] != first.json()["execution_id"]
    assert plain.json()["execution_id"] != first.json()["execution_id"]


def test_a_scheduler_job_s_retries_of_one_run_share_one_execution_id(
    client: httpx.Client,
) -> None:
    """Cloud Scheduler names the job and the schedule time of each run, the same on its
    retries: they give the execution id, so a retried job starts no second execution."""
    job = "projects/p/locations/l/jobs/ml-orchestrator-schedule-nightly-report"

    def run_of(at: str, name: str = job) -> str:
        headers = {"X-CloudScheduler-JobName": name, "X-CloudScheduler-ScheduleTime": at}
        response = client.post("/orchestrate", json=SEED, headers=headers)
        assert response.status_code == 202, response.text
        execution_id: str = response.json()["execution_id"]
        return execution_id

    first = run_of("2026-11-27T06:00:00Z")
    assert run_of("2026-11-27T06:00:00Z") == first  # the job retried the same run
    assert run_of("2026-11-28T06:00:00Z") != first  # the next run
    assert run_of("2026-11-27T06:00:00Z", job + "-2") != first  # another job


def test_a_scheduler_job_name_of_any_allowed_length_is_its_key_and_a_longer_one_refused(
    client: httpx.Client,
) -> None:
    """A job id may be 500 characters: its retries still share one execution; a header
    past the bound is a 422 naming it, never ignored (each retry would start another)."""
    job = "projects/p/locations/l/jobs/" + "j" * 500
    headers = {
        "X-CloudScheduler-JobName": job,
        "X-CloudScheduler-ScheduleTime": "2026-11-27T06:00:00Z",
    }
    first = client.post("/orchestrate", json=SEED, headers=headers)
    again = client.post("/orchestrate", json=SEED, headers=headers)
    assert first.status_code == again.status_code == 202, first.text
    assert first.json()["execution_id"] == again.json()["execution_id"]
    too_long = {**headers, "X-CloudScheduler-JobName": "j" * 1025}
    assert_problem(client.post("/orchestrate", json=SEED, headers=too_long), 422, "JobName")
    odd_time = {**headers, "X-CloudScheduler-ScheduleTime": "t" * 65}
    assert_problem(client.post("/orchestrate", json=SEED, headers=odd_time), 422, "ScheduleTime")


def assert_problem(response, status: int, field: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == MEDIA_TYPE
    problem = response.json()
    assert problem["status"] == status
    assert field in problem["detail"]
    return problem


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "(body)"),
        (b"[1, 2]", 422, "(body)"),
        (b'{"session_id": "s"}', 422, "user_id"),
        (
            b'{"user_id": "u", "session_id": "s", "create_user_embedding": "maybe"}',
            422,
            "create_user_embedding",
        ),
        (b'{"user_id": 5, "session_id": "s"}', 422, "user_id"),
        (b'{"user_id": "u", "session_id": "s", "flow": "nope"}', 404, "flow"),
        (b'{"user_id": "u", "session_id": "s", "flow": 7}', 422, "flow"),
        (b'{"user_id": "u", "session_id": "s", "webhook_url": "ftp://x/y"}', 422, "webhook_url"),
        (
            b'{"user_id": "u", "session_id": "s", "webhook_url": "http://127.0.0.1/h"}',
            422,
            "webhook_url",
        ),
        (
            b'{"user_id": "u", "session_id": "s", "webhook_url": "http://10.1.2.3/h"}',
            422,
            "webhook_url",
        ),
        (
            b'{"user_id": "u", "session_id": "s", "webhook_url": "http://u:p@8.8.8.8/h"}',
            422,
            "webhook_url",
        ),
        (b'{"user_id": "' + b"x" * 300 + b'", "session_id": "s"}', 422, "user_id"),
    ],
)
def test_refused_requests_name_the_field_and_publish_nothing(
    client: httpx.Client, transport: RecordingTransport, body: bytes, status: int, field: str
) -> None:
    response = client.post(
        "/orchestrate", content=body, headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, status, field)
    if status == 422:
        assert any(error["field"].startswith(field) for error in problem["errors"])
    assert transport.published == []


def test_an_over_long_idempotency_key_is_refused(
    client: httpx.Client, transport: RecordingTransport
) -> None:
    response = client.post("/orchestrate", json=SEED, headers={"Idempotency-Key": "k" * 256})
    assert_problem(response, 422, "Idempotency-Key")
    assert transport.published == []


def test_a_body_over_one_megabyte_is_413(
    client: httpx.Client, transport: RecordingTransport
) -> None:
    body = {**SEED, "notes": "x" * 1_000_001}
    assert_problem(client.post("/orchestrate", json=body), 413, "(body)")
    assert transport.published == []


def test_a_public_webhook_url_is_accepted(
    client: httpx.Client, transport: RecordingTransport
) -> None:
    response = client.post("/orchestrate", json={**SEED, "webhook_url": "https://8.8.8.8/hook"})
    assert response.status_code == 202
    [(message, _)] = transport.on(TOPIC)
    assert message["webhook_url"] == "https://8.8.8.8/hook"


def test_an_unreachable_broker_is_503_with_retry_after(
    client: httpx.Client, transport: RecordingTransport
) -> None:
    transport.down = True
    response = client.post("/orchestrate", json=SEED)
    assert_problem(response, 503, "not accepted")
    assert response.headers["retry-after"] == "5"


def test_a_request_the_broker_refuses_leaves_no_queued_record(
    client: httpx.Client, transport: RecordingTransport
) -> None:
    """The queued record is written while the message is published: taken back on a 503."""
    transport.down = True
    headers = {"Idempotency-Key": "refused-once"}
    assert client.post("/orchestrate", json=SEED, headers=headers).status_code == 503
    transport.down = False
    accepted = client.post("/orchestrate", json=SEED, headers={"Idempotency-Key": "other"})
    assert client.get(accepted.json()["status_url"]).json()["status"] == "queued"
    listed = client.get("/executions").json()["executions"]
    assert [e["execution_id"] for e in listed] == [accepted.json()["execution_id"]]


def test_health_ready_and_docs(client: httpx.Client, transport: RecordingTransport) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "flows": ["ml-orchestration"]}
    assert client.get("/docs").status_code == 200
    assert "/orchestrate" in client.get("/openapi.json").json()["paths"]
    transport.down = True
    assert_problem(client.get("/ready"), 503, "broker down")


def test_an_unknown_execution_is_404(client: httpx.Client) -> None:
    assert_problem(client.get("/executions/does-not-exist"), 404, "does-not-exist")


CHOKING = {
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "NaN": b'{"user_id": NaN, "session_id": "s"}',
    "1e999": b'{"user_id": "u", "session_id": "s", "x": 1e999}',
    "5,000 digits": b'{"user_id": "u", "session_id": "s", "x": ' + b"7" * 5000 + b"}",
    "lone surrogate": b'{"user_id": "\\ud800", "session_id": "s"}',
}


@pytest.mark.parametrize("body", CHOKING.values(), ids=CHOKING.keys())
def test_a_body_a_parser_chokes_on_is_a_400_naming_the_reason(
    client: httpx.Client, transport: RecordingTransport, body: bytes
) -> None:
    response = client.post(
        "/orchestrate", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == MEDIA_TYPE
    [error] = response.json()["errors"]
    assert error["field"] == "(body)" and error["reason"]
    assert transport.published == []


def test_an_accepted_execution_reads_as_queued_until_a_delivery_claims_it(
    client: httpx.Client, transport: RecordingTransport
) -> None:
    """The message is never pushed here (a recording transport): it stays queued, not 404."""
    accepted = client.post("/orchestrate", json=SEED).json()
    status = client.get(accepted["status_url"])
    assert status.status_code == 200
    document = status.json()
    assert document["status"] == "queued"
    assert document["input"] == {**SEED, "min_score": None}
    assert document["started_at"] is None and document["steps"] == {}
    [(message, _)] = transport.on(TOPIC)
    assert document["requested_at"] == message["requested_at"]

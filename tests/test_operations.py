"""The operators' API through the real app on loopback: listing, and who may operate."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from service.app import create_app
from service.messages import Execution, ExecutionStatus
from service.store import MemoryStore
from tests.conftest import make_settings, project_flows
from tests.support.fakes import RecordingTransport
from tests.support.identity import Identity, certs_server
from tests.support.servers import serve

FLOWS = project_flows()
SERVICE_URL = "https://orchestrator.example"
START = datetime(2026, 11, 26, 9, tzinfo=UTC)


def executions() -> list[Execution]:
    """Twelve ended executions, a minute apart: failed, succeeded, partial, failed, ..."""
    made = []
    for n in range(12):
        execution = Execution(
            execution_id=f"e-{n:02}",
            flow="ml-orchestration",
            status=ExecutionStatus.RUNNING,
            input={"user_id": f"u{n}", "secret_input": "not in listings"},
            requested_at=START + timedelta(minutes=n),
        )
        status = [ExecutionStatus.FAILED, ExecutionStatus.SUCCEEDED, ExecutionStatus.PARTIAL][n % 3]
        execution.finish(status, None if status == ExecutionStatus.SUCCEEDED else f"error {n}")
        made.append(execution)
    return made


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

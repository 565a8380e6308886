"""The HTTP API fuzzed from its own OpenAPI document, and with JSON built to choke a
parser: no input makes it answer 5xx.

schemathesis generates the requests; its pytest plugin does not load under
pytest 9, so each operation's strategy is driven with hypothesis directly.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.dev.servers import serve
from tests.support.fakes import RecordingTransport
from tests.support.project import make_settings, project_flows

# Starts processes or tools (or fuzzes): the full tier only (`./scripts/test.sh`).
pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 80


def test_no_generated_request_makes_the_api_fail() -> None:
    app = create_app(make_settings(), project_flows("http://fn.invalid"), RecordingTransport())
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    with serve(app) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def exercise(case: schemathesis.Case) -> None:
                response = case.call(base_url=url, timeout=30)
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.path}: {response.status_code}")

            exercise()
    total = sum(statuses.values())
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    print(
        f"\nschemathesis: {total} requests over {len(operations)} operations, "
        f"{server_errors} server errors; statuses {dict(sorted(statuses.items()))}"
    )
    assert len(operations) >= 5
    assert failures == []


@st.composite
def hostile_json(draw: st.DrawFn) -> bytes:
    """JSON-ish text built to choke a parser: deep nesting, non-JSON numbers, surrogates."""
    core = draw(
        st.sampled_from(
            [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400", b"9" * 4400, b'"\\udc00"']
        )
    )
    depth = draw(st.one_of(st.integers(0, 80), st.integers(1_000, 200_000)))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"k":', b"}")]))
    text = opener * depth + core + closer * depth
    if draw(st.booleans()):
        text = (
            b'{"flow": "ml-orchestration", "input": {"user_id": ' + text + b', "session_id": "s"}}'
        )
    cut = draw(st.integers(0, 3))
    return text[: len(text) - cut] if cut else text


def test_no_hostile_json_makes_either_endpoint_fail() -> None:
    """The front door answers 4xx; the push acks (204) and reports a rejection."""
    transport = RecordingTransport()
    app = create_app(
        make_settings(result_topic="results"), project_flows("http://fn.invalid"), transport
    )
    statuses: Counter[str] = Counter()
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:

        @given(body=hostile_json())
        @settings(max_examples=150, deadline=None, database=None)
        def exercise(body: bytes) -> None:
            front = client.post(
                "/orchestrate", content=body, headers={"content-type": "application/json"}
            )
            statuses[f"front door {front.status_code}"] += 1
            assert front.status_code in {400, 413, 422}, body[:200]
            data = base64.b64encode(body).decode()
            envelope = {"message": {"data": data, "messageId": str(uuid.uuid4())}}
            reported = len(transport.on("results"))
            push = client.post("/pubsub/push", json=envelope)
            statuses[f"push {push.status_code}"] += 1
            assert push.status_code == 204, body[:200]
            [(rejection, _)] = transport.on("results")[reported:]
            assert rejection["status"] == "rejected"

        exercise()
    print(f"\nhostile JSON: {dict(sorted(statuses.items()))}")

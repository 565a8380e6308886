"""Faults and hostile input: every promise holds when peers trickle, the broker stalls,
Firestore is down, operators send anything, a deploy changed the flow, or a cancel races
the last call. Faults are real: a TCP proxy on loopback refuses or stalls, a loopback
server trickles its answer (tests/support/faults.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from service.api.inbound_auth import AuthRefused, GoogleCertificates
from service.app import create_app
from service.backends.firestore import FirestoreStore
from service.backends.listing import ExecutionQuery, page_token
from service.backends.memory import MemoryStore
from service.backends.pubsub import PubSubTransport
from service.backends.store import ExecutionStore
from service.dev.emulator import Emulator, EmulatorAdmin
from service.dev.servers import serve
from service.dev.standins import StandIns, WebhookReceiver
from service.engine.kinds.base import MAX_FOR_EACH_ITEMS
from service.engine.outbound import NoAnswer, http_clients
from service.engine.outbound_auth import GoogleIdTokens
from service.errors import BrokerUnavailable, DeliveryFailed
from service.execution import Execution, ExecutionStatus, StepResult, StepStatus, now
from service.messages import RequestMessage
from service.metrics import Metrics
from service.telemetry import Tracing
from service.worker.delivery import ResultDelivery
from service.worker.targets import WebhookTargets
from tests.support.fakes import RecordingTransport
from tests.support.faults import Mode, proxy, trickling_server
from tests.support.functions import Functions, run
from tests.support.identity import STALLING_AUDIENCE
from tests.support.project import WEBHOOK_SECRET, make_settings, project_flows
from tests.support.waits import until

# Asserts how long things take: run alone, after the parallel tier (scripts/test.sh).
pytestmark = pytest.mark.timing

FLOWS = project_flows("http://fn")
DAY = timedelta(days=1)


def ended(status: ExecutionStatus = ExecutionStatus.SUCCEEDED) -> Execution:
    execution = Execution(
        execution_id=str(uuid.uuid4()),
        flow="ml-orchestration",
        status=ExecutionStatus.RUNNING,
        input={"user_id": "u", "session_id": "s"},
    )
    execution.finish(status)
    return execution


# 1. Peers that trickle: every outbound exchange has a total deadline per attempt.


async def test_a_webhook_receiver_trickling_its_headers_cannot_hold_the_delivery() -> None:
    """Before: httpx's per-read timeout let a byte every 0.2 s hold an attempt for ever."""
    with trickling_server(every_s=0.2) as url:
        async with http_clients() as (http, _):
            delivery = ResultDelivery(
                client=http,
                transport=RecordingTransport(),
                targets=WebhookTargets(True, None),
                secret=WEBHOOK_SECRET,
                result_topic=None,
                tracing=Tracing(),
                metrics=Metrics(),
                attempt_timeout_s=0.5,
                budget_s=1.5,
            )
            started = time.monotonic()
            with pytest.raises(DeliveryFailed, match="timed out after"):
                async with asyncio.timeout(10):
                    await delivery.deliver(ended(), f"{url}/hook")
            took = time.monotonic() - started
    assert took < 2.5


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nX-Drip: ", b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"],
    ids=["headers", "body"],
)
async def test_an_ml_function_trickling_its_answer_is_cut_at_the_attempt_timeout(
    head: bytes,
) -> None:
    with trickling_server(head, every_s=0.1) as url:
        async with http_clients() as (_, sender):
            started = time.monotonic()
            with pytest.raises(NoAnswer, match=r"timed out after 0\.5 s"):
                async with asyncio.timeout(10):
                    await sender.send("POST", f"{url}/fn", {}, {}, 0.5)
    assert time.monotonic() - started < 1.5


async def test_google_certificates_from_a_trickling_server_are_refused_in_time() -> None:
    with trickling_server(every_s=0.1) as url:
        async with http_clients() as (http, _):
            certificates = GoogleCertificates(http, f"{url}/certs", timeout_s=0.5)
            started = time.monotonic()
            with pytest.raises(AuthRefused, match=r"no answer in 0\.5 s") as refused:
                async with asyncio.timeout(10):
                    await certificates.get(refresh=False)
    assert refused.value.status == 503
    assert time.monotonic() - started < 1.5


async def test_an_id_token_the_metadata_server_is_slow_to_give_fails_the_attempt_in_time(
    metadata: Counter[str],
) -> None:
    tokens = GoogleIdTokens(timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no answer in 0\.5 s"):
        await tokens.headers(STALLING_AUDIENCE)
    assert time.monotonic() - started < 1.5
    assert metadata[STALLING_AUDIENCE] == 1


# 2. A stalled broker: a publish given up on is never sent later.


@pytest.mark.emulator
async def test_a_publish_refused_while_the_broker_stalls_is_never_sent_later(
    emulator: Emulator,
) -> None:
    """Before: the refused messages waited in their batch and went out once it flowed again."""
    admin = EmulatorAdmin(emulator.host, f"stall-{uuid.uuid4().hex[:8]}")
    admin.topic("requests")
    admin.pull_subscription("requests-pull", "requests")
    with proxy(emulator.host) as broker:
        transport = PubSubTransport(
            admin.project, timeout_s=1.0, max_in_flight=1, emulator_host=broker.address
        )
        try:
            await transport.publish("requests", b"before", {})  # the channel is up
            broker.mode = Mode.STALL
            in_flight = asyncio.create_task(transport.publish("requests", b"in flight", {}))
            await asyncio.sleep(0.05)
            waiting = [transport.publish("requests", b"waiting %d" % n, {}) for n in range(3)]
            refused = await asyncio.gather(in_flight, *waiting, return_exceptions=True)
            broker.mode = Mode.PASS
            await transport.publish("requests", b"after", {})
        finally:
            await transport.close()
    assert all(isinstance(outcome, BrokerUnavailable) for outcome in refused), refused
    assert "not sent" in str(refused[1])
    arrived: set[bytes] = set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # a late copy would arrive right after "after"
        arrived |= {base64.b64decode(str(m["data"])) for m in admin.pull("requests-pull")}
        time.sleep(0.1)
    assert {b"before", b"after"} <= arrived
    # The in-flight one was cut on its way: the broker may have taken it (documented).
    assert not [data for data in arrived if data.startswith(b"waiting")]


@pytest.mark.emulator
def test_a_wake_while_the_broker_refuses_is_a_503_within_the_bound(emulator: Emulator) -> None:
    """Before: 200 {"woken": 0}, so Cloud Scheduler saw success while nothing resumed."""
    admin = EmulatorAdmin(emulator.host, f"wake-{uuid.uuid4().hex[:8]}")
    admin.topic("ml-orchestration-requests")
    store = MemoryStore()
    waiting = Execution(
        execution_id="due-1",
        flow="ml-orchestration",
        status=ExecutionStatus.RUNNING,
        input={"user_id": "u", "session_id": "s"},
    )
    waiting.steps["nap"] = StepResult(status=StepStatus.WAITING, wake_at=now() - DAY)
    asyncio.run(store.suspend(waiting))
    with proxy(emulator.host) as broker:
        transport = PubSubTransport(admin.project, timeout_s=1.0, emulator_host=broker.address)
        settings = make_settings(google_cloud_project=admin.project, wake_interval_s=0)
        with serve(create_app(settings, FLOWS, transport, store)) as url:
            broker.mode = Mode.REFUSE
            began = time.monotonic()
            refused = httpx.post(f"{url}/executions/wake", timeout=30)
            took = time.monotonic() - began
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "5"
    assert "0 of 1" in refused.json()["detail"]
    assert took < 5


# 3. Firestore down: 503 with Retry-After within the bound, everywhere.


def firestore_through(link_address: str, project: str) -> FirestoreStore:
    """A store whose calls go through the proxy at `link_address`, each bounded at 1 s."""
    return FirestoreStore(project, "executions", DAY, emulator_host=link_address, timeout_s=1.0)


@pytest.mark.emulator
@pytest.mark.parametrize("mode", [Mode.STALL, Mode.REFUSE])
async def test_every_store_call_is_unavailable_within_its_bound_when_firestore_is_down(
    firestore_emulator: Emulator, mode: Mode
) -> None:
    """Before: calls blocked 40-280 s, and a claim was 'running elsewhere' (a 409)."""
    project = f"down-{uuid.uuid4().hex[:8]}"
    known = ended()
    await _save(FirestoreStore(project, "executions", DAY), known)  # the project is up
    with proxy(firestore_emulator.host) as link:
        store = firestore_through(link.address, project)
        assert await store.get(known.execution_id) is not None
        link.mode = mode
        step = StepResult(status=StepStatus.SUCCEEDED)
        calls = {
            "claim": store.claim(ended(), "owner", 30),
            "get": store.get(known.execution_id),
            "list": store.list(ExecutionQuery()),
            "cancel": store.cancel(known.execution_id),
            "redrive": store.redrive(known.execution_id),
            "enqueue": store.enqueue(ended()),
            "save_steps": store.save_steps(known.execution_id, {"a": step}),
            "save": store.save(ended()),
            "renew": store.renew(known.execution_id, "owner", 30),
            "release": store.release(known.execution_id, "owner"),
            "cancel_requests": store.cancel_requests(),
        }

        async def timed(call: Awaitable[Any]) -> tuple[float, BaseException | None]:
            started = time.monotonic()
            try:
                await call
            except Exception as exc:
                return time.monotonic() - started, exc
            return time.monotonic() - started, None

        outcomes = dict(zip(calls, await asyncio.gather(*map(timed, calls.values())), strict=True))
        link.mode = Mode.PASS
        await store.close()
    took = {name: round(seconds, 2) for name, (seconds, _) in outcomes.items()}
    print(f"\nFirestore {mode.value}: each call's answer in s: {took}")
    assert {name: type(error).__name__ for name, (_, error) in outcomes.items()} == dict.fromkeys(
        calls, "StoreUnavailable"
    )
    assert max(took.values()) < 2.5, took


@pytest.mark.emulator
def test_with_firestore_down_every_endpoint_answers_503_and_the_front_door_202(
    firestore_emulator: Emulator,
) -> None:
    """Before: 500s after 40-278 s, a 202 after 32-51 s, a push 409 after 48 s."""
    transport = RecordingTransport()
    project = f"down-{uuid.uuid4().hex[:8]}"
    failed = ended(ExecutionStatus.FAILED)
    asyncio.run(_save(FirestoreStore(project, "executions", DAY), failed))
    with proxy(firestore_emulator.host) as link:
        store = firestore_through(link.address, project)
        app = create_app(make_settings(), FLOWS, transport, store)
        with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            assert client.get(f"/executions/{failed.execution_id}").status_code == 200
            link.mode = Mode.STALL
            answers = {}
            for method, path, body in [
                ("GET", f"/executions/{failed.execution_id}", None),
                ("GET", "/executions", None),
                ("POST", f"/executions/{failed.execution_id}/cancel", None),
                ("POST", f"/executions/{failed.execution_id}/redrive", None),
                ("POST", "/executions/redrive", {"status": ["failed"]}),
            ]:
                started = time.monotonic()
                response = client.request(method, path, json=body)
                answers[f"{method} {path}"] = (response.status_code, time.monotonic() - started)
                assert response.status_code == 503, (path, response.text)
                assert response.headers["retry-after"] == "5"
                assert "execution store" in response.json()["detail"]
            started = time.monotonic()
            accepted = client.post("/orchestrate", json={"user_id": "u", "session_id": "s"})
            answers["POST /orchestrate"] = (accepted.status_code, time.monotonic() - started)
            [(_, data, _)] = transport.published
            envelope = {"message": {"data": base64.b64encode(data).decode(), "messageId": "1"}}
            started = time.monotonic()
            pushed = client.post("/pubsub/push", json=envelope)
            answers["POST /pubsub/push"] = (pushed.status_code, time.monotonic() - started)
            link.mode = Mode.PASS
    print("\nFirestore stalled, (status, seconds):", answers)
    assert accepted.status_code == 202
    assert pushed.status_code == 503  # redelivered later: not "running elsewhere"
    assert max(seconds for _, seconds in answers.values()) < 3.5, answers


async def _save(store: FirestoreStore, execution: Execution) -> None:
    await store.save(execution, delivered=True)
    await store.close()


# 4. Hostile ids, page tokens and times: a 4xx naming the field, on both stores.


@pytest.fixture(params=["memory", pytest.param("firestore", marks=pytest.mark.emulator)])
def operator_client(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    store: ExecutionStore = MemoryStore()
    if request.param == "firestore":
        request.getfixturevalue("firestore_emulator")
        store = FirestoreStore(f"hostile-{uuid.uuid4().hex[:8]}", "executions", DAY)
    app = create_app(make_settings(), FLOWS, RecordingTransport(), store)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


HOSTILE_IDS = ["%2E%2E", "%2E", "__x__", "__name__", "-x", "a" * 129]
FAR_TIMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]


def token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def test_hostile_operator_input_is_a_4xx_naming_the_field(operator_client: httpx.Client) -> None:
    """Before, on Firestore: 21 of these answered 500."""
    asked: list[tuple[str, str, Any, str]] = []
    for bad in HOSTILE_IDS:
        asked += [
            ("GET", f"/executions/{bad}", None, "path.execution_id"),
            ("POST", f"/executions/{bad}/cancel", None, "path.execution_id"),
            ("POST", f"/executions/{bad}/redrive", None, "path.execution_id"),
        ]
    moment = "2026-11-25T10:00:00+00:00"
    for key in [f"{moment}|a/b", f"{moment}|", f"{moment}|__x__", *(f"{t}|x" for t in FAR_TIMES)]:
        asked.append(("GET", f"/executions?page_token={token(key)}", None, "page_token"))
    for far in FAR_TIMES:
        for name in ("since", "until"):
            query = httpx.QueryParams({name: far})
            asked.append(("GET", f"/executions?{query}", None, f"query.{name}"))
            body = {"status": ["failed"], name: far}
            asked.append(("POST", "/executions/redrive", body, f"body.{name}"))
    for method, path, body, field in asked:
        response = operator_client.request(method, path, json=body)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
        fields = [error["field"] for error in response.json().get("errors", [])]
        assert field in fields, (path, response.json())
    a_real_one = ended()
    assert operator_client.get(f"/executions/{a_real_one.execution_id}").status_code == 404


def test_a_page_token_of_the_listing_still_pages() -> None:
    """The stricter token check refuses nothing a listing gives out."""
    summary = ended().summary()
    app = create_app(make_settings(), FLOWS, RecordingTransport(), MemoryStore())
    with serve(app) as url:
        response = httpx.get(f"{url}/executions", params={"page_token": page_token(summary)})
    assert response.status_code == 200


# 5. Operator bodies: bounded, and refused before they are read when the caller may not operate.


def test_an_operator_body_is_refused_unread_unless_the_caller_may_operate() -> None:
    """A 30 MB body announced, one byte sent: the 403 comes without waiting for the rest.
    Before: the body was read (and held in memory) first, then refused."""
    settings = make_settings(push_auth_audience="https://orchestrator.example")
    app = create_app(settings, FLOWS, RecordingTransport(), MemoryStore())
    with serve(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(
                b"POST /executions/redrive HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 30000000\r\n\r\n["
            )
            answer = conn.recv(65536)
            if b"\r\n\r\n" in answer and answer.endswith(b"\r\n\r\n"):
                answer += conn.recv(65536)  # the body came in a segment of its own
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"ADMIN_EMAILS is not set" in answer


def test_an_operator_body_is_bounded_like_the_front_door_s() -> None:
    app = create_app(make_settings(), FLOWS, RecordingTransport(), MemoryStore())
    with serve(app) as url:
        large = httpx.post(f"{url}/executions/redrive", content=b" " * 2_000_000, timeout=30)
        empty = httpx.post(f"{url}/executions/redrive")
        not_json = httpx.post(f"{url}/executions/redrive", content=b"{not json")
    assert large.status_code == 413
    assert (empty.status_code, empty.json()["errors"][0]["field"]) == (422, "body")
    assert (not_json.status_code, not_json.json()["errors"][0]["field"]) == (400, "(body)")


# 6. A stored step the flow no longer has: failed at once, delivered and acked.


@pytest.mark.parametrize("how", ["resumed", "re-driven"])
def test_an_execution_holding_a_step_the_flow_lost_fails_at_once_and_is_acked(how: str) -> None:
    """A deploy renamed a step: a resumed run held its failure (on_error: continue), a
    re-drive its success. Before: KeyError, nacked 503 at every delivery until the last."""
    store = MemoryStore()
    transport = RecordingTransport()
    execution = ended(ExecutionStatus.PARTIAL)
    status = StepStatus.FAILED if how == "resumed" else StepStatus.SUCCEEDED
    execution.steps = {"renamed_since": StepResult(status=status, error="HTTP 400")}
    app = create_app(make_settings(result_topic="results"), FLOWS, transport, store)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        if how == "resumed":  # its instance crashed mid-run; the lease ran out
            execution.status = ExecutionStatus.RUNNING
            asyncio.run(store.claim(execution, "crashed", lease_s=0.001))
            data = RequestMessage.of(execution).model_dump_json().encode()
        else:
            asyncio.run(store.save(execution, delivered=True))
            assert client.post(f"/executions/{execution.execution_id}/redrive").status_code == 202
            [(_, data, _)] = transport.published
        envelope = {"message": {"data": base64.b64encode(data).decode(), "messageId": "2"}}
        pushed = client.post("/pubsub/push", json=envelope)
        document = client.get(f"/executions/{execution.execution_id}").json()
    assert pushed.status_code == 204
    assert document["status"] == "failed"
    assert "no longer has these steps of the execution: renamed_since" in document["error"]
    [(result, _)] = transport.on("results")
    assert result["status"] == "failed"


# 7. A cancel answered `cancelling` ends `cancelled`, however close to the last call's end.


@pytest.mark.parametrize("kind", ["memory", pytest.param("firestore", marks=pytest.mark.emulator)])
def test_a_cancel_landing_just_before_the_last_call_returns_ends_cancelled(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Before: it ended `succeeded` when the call returned before the cancel watch looked."""
    store: ExecutionStore = MemoryStore()
    if kind == "firestore":
        request.getfixturevalue("firestore_emulator")
        store = FirestoreStore(f"race-{uuid.uuid4().hex[:8]}", "executions", DAY)
    gate = threading.Event()
    functions = StandIns(gates={"/profession-orchestrator": gate})
    webhook = WebhookReceiver(WEBHOOK_SECRET)
    with serve(functions.app()) as functions_url, serve(webhook.app()) as webhook_url:
        settings = make_settings(webhook_allow_private_networks=True)
        app = create_app(settings, project_flows(functions_url), store=store)
        with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            body = {
                "user_id": "u",
                "session_id": "s",
                "process_profession_orchestrator": True,
                "webhook_url": f"{webhook_url}/hook",
            }
            execution_id = client.post("/orchestrate", json=body).json()["execution_id"]
            until(lambda: functions.called("/profession-orchestrator"))
            cancel = client.post(f"/executions/{execution_id}/cancel")
            gate.set()  # the last call returns at once, long before the cancel watch looks
            until(lambda: webhook.deliveries)
            document = client.get(f"/executions/{execution_id}").json()
    assert cancel.json() == {"execution_id": execution_id, "status": "cancelling"}
    [delivered] = webhook.documents()
    assert delivered["status"] == document["status"] == "cancelled"
    assert document["steps"]["profession_orchestrator"]["status"] == "succeeded"


# 8. Any list for_each accepts can be filtered within CEL's budget.


async def test_the_longest_list_for_each_takes_can_be_filtered_by_the_default_flow() -> None:
    """Before: for_each took 10,000 items, and CEL refused to filter 10,000."""
    functions = Functions()
    vacancies = [
        {"vacancy_id": f"v{n}", "score": n / MAX_FOR_EACH_ITEMS} for n in range(MAX_FOR_EACH_ITEMS)
    ]
    functions.answers["/match-candidato"] = {"vacancies": vacancies}
    inputs = {
        "user_id": "u",
        "session_id": "s",
        "process_vacancy_orchestrator": True,
        "min_score": 0.999,
    }
    execution = await run(FLOWS["ml-orchestration"], functions, inputs)
    kept = [v for v in vacancies if v["score"] >= 0.999]
    assert execution.status == ExecutionStatus.SUCCEEDED, execution.error
    assert len(functions.bodies["/match-analysis-user-vacancy"]) == len(kept) > 0
    too_many = [*vacancies, {"vacancy_id": "one more", "score": 1.0}]
    functions.answers["/match-candidato"] = {"vacancies": too_many}
    del inputs["min_score"]  # unfiltered: the for_each limit speaks, not CEL's budget
    refused = await run(FLOWS["ml-orchestration"], functions, inputs)
    step = refused.steps["match_analysis_user_vacancy"]
    assert step.error == f"for_each: {len(too_many)} items, at most {MAX_FOR_EACH_ITEMS}"


def test_json_times_far_out_are_named_in_a_direct_producer_s_message() -> None:
    """requested_at at year 1 +14:00 is a poison message naming the field, not a store error."""
    transport = RecordingTransport()
    app = create_app(make_settings(result_topic="results"), FLOWS, transport, MemoryStore())
    message = {
        "flow": "ml-orchestration",
        "input": {"user_id": "u", "session_id": "s"},
        "requested_at": FAR_TIMES[0],
    }
    data = base64.b64encode(json.dumps(message).encode()).decode()
    with serve(app) as url:
        pushed = httpx.post(
            f"{url}/pubsub/push", json={"message": {"data": data, "messageId": "9"}}
        )
    assert pushed.status_code == 204
    [(rejected, _)] = transport.on("results")
    assert rejected["status"] == "rejected"
    assert "message.data.requested_at" in rejected["error"]

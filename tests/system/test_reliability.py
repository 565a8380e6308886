"""Resume, draining, delivery give-up and load protection, on the push handler itself."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from service.backends.memory import MemoryStore
from service.backends.store import ClaimState
from service.errors import StoreRefused, StoreUnavailable
from service.execution import Execution, ExecutionStatus, StepResult, StepStatus
from service.messages import PushEnvelope
from service.metrics import Metrics
from service.retry import RetryPolicy
from service.worker.handler import PushHandler
from service.worker.leases import Leases
from tests.support.engine import make_caller, make_parts
from tests.support.fakes import FaultyStore, RecordingTransport
from tests.support.functions import HttpxSender
from tests.support.project import make_settings, project_flows

FLOWS = project_flows("http://fn")
WEBHOOK = "http://hooks.example/hook"


@dataclass
class World:
    """ML functions and a webhook endpoint in memory, with what they were asked."""

    delay_s: float = 0.0
    webhook_statuses: list[int] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    webhooks: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "hooks.example":
            self.webhooks.append(json.loads(request.content))
            status = self.webhook_statuses.pop(0) if self.webhook_statuses else 204
            return httpx.Response(status)
        self.calls[request.url.path] += 1
        await asyncio.sleep(self.delay_s)
        if request.url.path == "/match-candidato":
            return httpx.Response(
                200, json={"vacancies": [{"vacancy_id": "v1"}, {"vacancy_id": "v2"}]}
            )
        return httpx.Response(200, json={"ok": True})


@pytest.fixture
async def world() -> World:
    return World()


@pytest.fixture
async def store() -> FaultyStore:
    return FaultyStore()


@pytest.fixture
async def results() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
async def handler(
    world: World, store: MemoryStore, results: RecordingTransport
) -> AsyncIterator[PushHandler]:
    settings = make_settings(webhook_allow_private_networks=True, result_topic="results")
    async with httpx.AsyncClient(transport=httpx.MockTransport(world)) as http:
        parts = make_parts(settings, FLOWS, results, store, http, HttpxSender(http))
        parts.push._drain_grace_s = 0.3
        yield parts.push


INPUT = {
    "user_id": "u",
    "session_id": "s",
    "create_user_embedding": True,
    "process_profession_orchestrator": True,
    "process_vacancy_orchestrator": True,
}


def short_leases(handler: PushHandler, lease_s: float) -> None:
    """Leases shorter than settings allow (3 s at least), for tests of their renewal."""
    handler._lease_s = lease_s
    handler._leases = Leases(handler._store, lease_s)


def envelope(execution_id: str, attempt: int | None = None) -> PushEnvelope:
    message = {
        "execution_id": execution_id,
        "flow": "ml-orchestration",
        "input": INPUT,
        "webhook_url": WEBHOOK,
        "requested_at": "2026-11-25T10:00:00Z",
    }
    data = base64.b64encode(json.dumps(message).encode()).decode()
    return PushEnvelope.model_validate(
        {"message": {"data": data, "messageId": "m"}, "deliveryAttempt": attempt}
    )


async def test_a_redelivered_execution_resumes_without_calling_finished_steps(
    handler: PushHandler, store: MemoryStore, world: World
) -> None:
    execution_id = str(uuid.uuid4())
    crashed = Execution(
        execution_id=execution_id,
        flow="ml-orchestration",
        status=ExecutionStatus.RUNNING,
        input=INPUT,
    )
    await store.claim(crashed, "crashed-instance", lease_s=0.1)
    await store.save_steps(
        execution_id,
        {"create_user_embeddings": StepResult(status=StepStatus.SUCCEEDED, attempts=1)},
    )
    vacancies = {"vacancies": [{"vacancy_id": "v1"}, {"vacancy_id": "v2"}, {"vacancy_id": "v3"}]}
    await store.save_steps(
        execution_id,
        {"match_candidato": StepResult(status=StepStatus.SUCCEEDED, attempts=1, output=vacancies)},
    )
    await asyncio.sleep(0.15)

    # INPUT lacks min_score, as one stored before the flow declared it: it reads as null.
    assert await handler.handle(envelope(execution_id)) == 204
    assert world.calls == {"/profession-orchestrator": 1, "/match-analysis-user-vacancy": 3}
    [document] = world.webhooks
    assert document["status"] == "succeeded"
    stored = await store.get(execution_id)
    assert stored is not None
    assert set(stored.steps) == {
        "create_user_embeddings",
        "match_candidato",
        "profession_orchestrator",
        "match_analysis_user_vacancy",
    }


async def test_a_live_lease_elsewhere_is_nacked(
    handler: PushHandler, store: MemoryStore, world: World
) -> None:
    execution_id = str(uuid.uuid4())
    other = Execution(
        execution_id=execution_id, flow="ml-orchestration", status=ExecutionStatus.RUNNING, input={}
    )
    await store.claim(other, "another-instance", lease_s=30)
    assert await handler.handle(envelope(execution_id)) == 409
    assert world.calls == {}


async def test_a_draining_instance_takes_no_new_work(handler: PushHandler, world: World) -> None:
    handler.drain()
    assert await handler.handle(envelope(str(uuid.uuid4()))) == 503
    assert world.calls == {}


async def test_unfinished_work_at_shutdown_is_nacked_and_left_resumable(
    handler: PushHandler, store: MemoryStore, world: World
) -> None:
    world.delay_s = 5
    execution_id = str(uuid.uuid4())
    running = asyncio.create_task(handler.handle(envelope(execution_id)))
    while not world.calls:
        await asyncio.sleep(0.01)
    handler.drain()
    assert await running == 503
    fresh = Execution(
        execution_id=execution_id, flow="ml-orchestration", status=ExecutionStatus.RUNNING, input={}
    )
    assert (await store.claim(fresh, "next", 30)).state == ClaimState.CLAIMED
    assert world.webhooks == []


async def test_work_that_ends_within_the_grace_period_is_acked(
    handler: PushHandler, world: World
) -> None:
    world.delay_s = 0.05
    handler._drain_grace_s = 5
    running = asyncio.create_task(handler.handle(envelope(str(uuid.uuid4()))))
    while not world.calls:
        await asyncio.sleep(0.01)
    handler.drain()
    assert await running == 204
    assert world.webhooks[0]["status"] == "succeeded"


async def test_an_undeliverable_webhook_is_given_up_at_the_last_attempt(
    handler: PushHandler, world: World, results: RecordingTransport
) -> None:
    world.webhook_statuses = [503] * 100
    execution_id = str(uuid.uuid4())
    assert await handler.handle(envelope(execution_id, attempt=1)) == 503
    calls = sum(world.calls.values())
    assert await handler.handle(envelope(execution_id, attempt=5)) == 204
    assert sum(world.calls.values()) == calls  # the flow did not run again
    assert await handler.handle(envelope(execution_id, attempt=6)) == 204
    assert len(world.webhooks) == 8  # 4 attempts per delivery, none after the give-up
    published = [attributes for _, attributes in results.on("results")]
    assert [a.get("webhook") for a in published] == [None, None, "undelivered"]


async def test_retries_add_at_most_about_a_fifth_to_a_failing_targets_load() -> None:
    attempts = 0

    async def failing(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        return httpx.Response(503)

    step = FLOWS["ml-orchestration"].steps["match_candidato"]
    step = type(step)(
        **{
            **{f: getattr(step, f) for f in step.__slots__},
            "retry": RetryPolicy(maximum_attempts=5, initial_interval=0, maximum_interval=0),
        }
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(failing)) as client:
        metrics = Metrics()
        caller = make_caller(HttpxSender(client), metrics=metrics)
        deadline = asyncio.get_running_loop().time() + 30
        calls = 500
        results = await asyncio.gather(*(caller.call(step, {}, deadline) for _ in range(calls)))
    ratio = attempts / calls
    print(
        f"\n{calls} calls to a failing target: {attempts} attempts ({ratio:.2f}x), "
        f"{calls * 5} without a retry budget"
    )
    assert all(result.error for result in results)
    assert ratio <= 1.25
    # The metrics count every attempt, and each retry the budget refused.
    counted = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(metrics.text().decode())
        for sample in family.samples
        if sample.name == "orchestrator_ml_calls_total"
    }
    assert counted["retryable"] == attempts
    assert counted["budget_refused"] > 0
    refused = sum("retry budget" in (result.error or "") for result in results)
    assert counted["budget_refused"] == refused


async def test_calls_to_one_host_are_limited_in_flight() -> None:
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json={})

    step = FLOWS["ml-orchestration"].steps["match_candidato"]
    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as client:
        caller = make_caller(HttpxSender(client), per_host_limit=5)
        deadline = asyncio.get_running_loop().time() + 30
        await asyncio.gather(*(caller.call(step, {}, deadline) for _ in range(50)))
    assert peak == 5


async def test_a_store_hiccup_while_renewing_does_not_let_another_instance_in(
    handler: PushHandler, store: MemoryStore, world: World
) -> None:
    """One failed renewal is logged and the lease kept: a second instance is still refused."""
    failures = [StoreUnavailable("execution store: unavailable")]
    renew = store.renew

    async def flaky_renew(execution_id: str, owner: str, lease_s: float) -> bool:
        if failures:
            raise failures.pop()
        return await renew(execution_id, owner, lease_s)

    store.renew = flaky_renew  # type: ignore[method-assign]
    short_leases(handler, 0.15)  # renewals every 50 ms; the first one fails
    world.delay_s = 0.1  # three steps deep: ~0.3 s, twice the lease
    settings = make_settings(webhook_allow_private_networks=True)
    async with httpx.AsyncClient(transport=httpx.MockTransport(world)) as http:
        other = make_parts(settings, FLOWS, RecordingTransport(), store, http, HttpxSender(http))
        other_instance = other.push
        execution_id = str(uuid.uuid4())
        first = asyncio.create_task(handler.handle(envelope(execution_id)))
        await asyncio.sleep(0.25)  # past the lease, had it not been renewed
        assert await other_instance.handle(envelope(execution_id)) == 409
        assert await first == 204
    assert failures == []
    assert len(world.webhooks) == 1
    assert world.calls["/create-user-embeddings"] == 1


def refuse_large(name: str, result: StepResult) -> Exception | None:
    if name == "match_candidato" and result.output is not None:
        return StoreRefused("execution store: 400 maximum entity size is 1048576 bytes")
    return None


async def test_an_output_the_store_refuses_fails_its_step_and_is_delivered_once(
    handler: PushHandler, store: FaultyStore, world: World
) -> None:
    store.save_step_fault = refuse_large
    execution_id = str(uuid.uuid4())
    assert await handler.handle(envelope(execution_id)) == 204
    [document] = world.webhooks
    assert document["status"] == "failed"
    stored = await store.get(execution_id)
    assert stored is not None
    step = stored.steps["match_candidato"]
    assert step.status == StepStatus.FAILED and step.output is None
    assert (step.error or "").startswith("outcome not stored: execution store: 400 maximum entity")
    assert stored.steps["match_analysis_user_vacancy"].status == StepStatus.SKIPPED
    assert stored.steps["profession_orchestrator"].status == StepStatus.SUCCEEDED
    # Pub/Sub may still push a copy: nothing is called again.
    assert await handler.handle(envelope(execution_id, attempt=2)) == 204
    assert world.calls["/match-candidato"] == 1
    assert len(world.webhooks) == 1


async def test_a_store_refusing_every_write_still_ends_in_a_delivered_result(
    handler: PushHandler, store: FaultyStore, world: World
) -> None:
    refused = StoreRefused("execution store: 400 invalid argument")
    store.save_step_fault = lambda *_: refused
    store.save_fault = lambda _: refused
    assert await handler.handle(envelope(str(uuid.uuid4()))) == 204
    [document] = world.webhooks
    assert document["status"] == "failed"
    assert document["error"] == "result not stored: execution store: 400 invalid argument"
    assert sum(world.calls.values()) == 1  # the first step; nothing ran after the refusal


async def test_an_unavailable_store_nacks_and_the_redelivery_resumes(
    handler: PushHandler, store: FaultyStore, world: World
) -> None:
    down = StoreUnavailable("execution store: 503 unavailable")
    store.save_step_fault = lambda name, _: down if name == "match_candidato" else None
    execution_id = str(uuid.uuid4())
    assert await handler.handle(envelope(execution_id, attempt=1)) == 503
    assert world.webhooks == []
    store.save_step_fault = lambda *_: None
    assert await handler.handle(envelope(execution_id, attempt=2)) == 204
    assert world.webhooks[0]["status"] == "succeeded"
    assert world.calls["/create-user-embeddings"] == 1  # stored before the outage
    assert world.calls["/match-candidato"] == 2  # its outcome was never stored


async def test_an_unexpected_error_nacks_then_fails_the_execution_at_the_last_attempt(
    handler: PushHandler, store: FaultyStore, world: World
) -> None:
    store.save_step_fault = lambda name, _: KeyError(name) if name == "match_candidato" else None
    execution_id = str(uuid.uuid4())
    with capture_logs() as logs:
        assert await handler.handle(envelope(execution_id, attempt=1)) == 503
    [nack] = [line for line in logs if line["event"] == "delivery nacked"]
    assert nack["reason"] == "KeyError: 'match_candidato'"
    assert world.webhooks == []
    assert await handler.handle(envelope(execution_id, attempt=5)) == 204
    [document] = world.webhooks
    assert document["status"] == "failed"
    assert document["error"] == "gave up at the last delivery: KeyError: 'match_candidato'"
    assert world.calls["/create-user-embeddings"] == 1
    stored = await store.get(execution_id)
    assert stored is not None and stored.status == ExecutionStatus.FAILED
    assert stored.steps["create_user_embeddings"].status == StepStatus.SUCCEEDED


class SlowDeliveredSave(MemoryStore):
    """The final save (delivered) ends the lease, then takes a while to return: the lease
    keeper wakes in between, as it can when the loop is busy (seen at 1,000 in flight)."""

    def __init__(self, pause_s: float) -> None:
        super().__init__()
        self.pause_s = pause_s

    async def save(self, execution: Execution, delivered: bool = False) -> None:
        await super().save(execution, delivered)
        if delivered:
            await asyncio.sleep(self.pause_s)


async def test_a_delivered_execution_is_acked_though_its_lease_ended_before_the_run_did(
    world: World, results: RecordingTransport
) -> None:
    store = SlowDeliveredSave(pause_s=0.1)
    settings = make_settings(webhook_allow_private_networks=True, result_topic="results")
    async with httpx.AsyncClient(transport=httpx.MockTransport(world)) as http:
        parts = make_parts(settings, FLOWS, results, store, http, HttpxSender(http))
        short_leases(parts.push, 0.09)  # renewed every 30 ms: it wakes inside the pause
        with capture_logs() as logs:
            status = await parts.push.handle(envelope(str(uuid.uuid4())))
    assert status == 204
    assert len(world.webhooks) == 1 and world.webhooks[0]["status"] == "succeeded"
    assert [
        line for line in logs if line["event"] == "lease lost; stopping this run of the execution"
    ] == []

"""The in-process transport: the same push handling and ack/nack rules, with no cloud."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
import structlog

from service.app import create_app
from service.backends.transport import InProcessTransport
from service.dev.servers import serve
from service.dev.standins import StandIns, WebhookReceiver
from service.messages import PushEnvelope
from service.retry import RetryPolicy
from tests.support.project import WEBHOOK_SECRET, make_settings, project_flows


class QuickTransport(InProcessTransport):
    REDELIVERY = RetryPolicy(maximum_attempts=5, initial_interval=0.01, maximum_interval=0.01)


async def test_a_nacked_message_is_redelivered_until_acked() -> None:
    transport = QuickTransport()
    answers = [503, 409, 204]
    seen: list[PushEnvelope] = []

    async def deliver(envelope: PushEnvelope) -> int:
        seen.append(envelope)
        return answers[len(seen) - 1]

    transport.subscribe("requests", deliver)
    await transport.publish("requests", b'{"a": 1}', {"k": "v"})
    while len(seen) < 3:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert [envelope.delivery_attempt for envelope in seen] == [1, 2, 3]
    assert base64.b64decode(seen[0].message.data) == b'{"a": 1}'
    assert seen[0].message.attributes == {"k": "v"}
    await transport.close()


async def test_a_message_nacked_every_time_stops_after_max_attempts() -> None:
    transport = QuickTransport()
    seen: list[int] = []

    async def deliver(envelope: PushEnvelope) -> int:
        seen.append(envelope.delivery_attempt or 0)
        return 503

    transport.subscribe("requests", deliver)
    await transport.publish("requests", b"{}", {})
    await asyncio.sleep(0.3)
    assert seen == [1, 2, 3, 4, 5]
    await transport.close()


async def test_each_subscriber_gets_the_message_in_a_context_of_its_own() -> None:
    """As each subscription of a Pub/Sub topic, pushed apart from the publisher: what the
    publisher bound to its logs does not follow the message."""
    transport = InProcessTransport()
    seen: list[tuple[str, dict[str, object]]] = []

    def subscriber(name: str) -> Callable[[PushEnvelope], Awaitable[int]]:
        async def deliver(envelope: PushEnvelope) -> int:
            seen.append((name, structlog.contextvars.get_contextvars()))
            return 204

        return deliver

    transport.subscribe("events", subscriber("first"))
    transport.subscribe("events", subscriber("second"))
    with structlog.contextvars.bound_contextvars(trigger="publisher's"):
        await transport.publish("events", b"{}", {})
    while len(seen) < 2:
        await asyncio.sleep(0.01)
    assert sorted(seen) == [("first", {}), ("second", {})]
    await transport.close()


async def test_messages_of_topics_nobody_subscribes_are_kept() -> None:
    transport = InProcessTransport()
    await transport.publish("results", b"doc", {"status": "succeeded"})
    assert list(transport.published["results"]) == [(b"doc", {"status": "succeeded"})]


@pytest.mark.slow  # the demo stack, end to end
def test_a_flow_runs_end_to_end_on_the_in_process_transport() -> None:
    """POST /orchestrate → in-process push → stand-ins → signed webhook, and a nack is retried."""
    functions = StandIns()
    webhook = WebhookReceiver(WEBHOOK_SECRET, script=[500, 500, 500, 500])
    with serve(functions.app()) as functions_url, serve(webhook.app()) as webhook_url:
        settings = make_settings(webhook_allow_private_networks=True)
        app = create_app(settings, project_flows(functions_url))
        with serve(app) as url, httpx.Client(base_url=url) as client:
            seed = {
                "user_id": "u",
                "session_id": "s",
                "create_user_embedding": True,
                "process_profession_orchestrator": True,
                "process_vacancy_orchestrator": True,
                "webhook_url": f"{webhook_url}/hook",
            }
            accepted = client.post("/orchestrate", json=seed).json()
            deadline = time.monotonic() + 30
            while len(webhook.deliveries) < 5:
                assert time.monotonic() < deadline, "no delivery after the redelivery"
                time.sleep(0.05)
            status = client.get(f"/executions/{accepted['execution_id']}").json()
    assert status["status"] == "succeeded"
    assert len(functions.calls) == 1 + 1 + 1 + 3  # the redelivery did not run the flow again
    assert {d.headers["webhook-id"] for d in webhook.deliveries} == {accepted["execution_id"]}
    assert all(d.verified for d in webhook.deliveries)
    assert json.loads(webhook.deliveries[-1].body)["status"] == "succeeded"

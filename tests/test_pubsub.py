"""The Pub/Sub transport against the real emulator: batching in the loop, limits, failures."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

import pytest
from google.pubsub_v1.types import PubsubMessage

from service.dev.emulator import Emulator, EmulatorAdmin, free_port
from service.errors import BrokerUnavailable
from service.pubsub import MAX_BATCH_MESSAGES, PubSubTransport, batches
from service.transport import MAX_MESSAGE_BYTES


@pytest.fixture
def admin(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> EmulatorAdmin:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
    admin = EmulatorAdmin(emulator.host, f"pubsub-{uuid.uuid4().hex[:8]}")
    admin.topic("requests")
    admin.pull_subscription("requests-pull", "requests")
    return admin


@pytest.mark.emulator
async def test_concurrent_publishes_each_get_their_id_and_arrive_whole(
    admin: EmulatorAdmin,
) -> None:
    transport = PubSubTransport(admin.project)
    try:
        ids = await asyncio.gather(
            *(
                transport.publish("requests", f"message {n}".encode(), {"n": str(n)})
                for n in range(300)
            )
        )
    finally:
        await transport.close()
    assert len(set(ids)) == 300
    pulled: list[dict[str, object]] = []
    deadline = time.monotonic() + 20
    while len(pulled) < 300 and time.monotonic() < deadline:
        pulled += admin.pull("requests-pull", max_messages=500)
    by_id = {message["messageId"]: message for message in pulled}
    for n, message_id in enumerate(ids):
        message = by_id[message_id]
        assert base64.b64decode(message["data"]) == f"message {n}".encode()  # type: ignore[arg-type]
        assert message["attributes"] == {"n": str(n)}


@pytest.mark.emulator
async def test_a_message_over_pubsub_s_limit_is_refused_before_sending(
    admin: EmulatorAdmin,
) -> None:
    transport = PubSubTransport(admin.project)
    with pytest.raises(ValueError, match="Pub/Sub takes 10000000"):
        await transport.publish("requests", b"x" * (MAX_MESSAGE_BYTES + 1), {})
    await transport.close()
    assert admin.pull("requests-pull") == []


@pytest.mark.emulator
async def test_an_unknown_topic_is_broker_unavailable(admin: EmulatorAdmin) -> None:
    transport = PubSubTransport(admin.project)
    try:
        with pytest.raises(BrokerUnavailable, match="cannot publish to nowhere"):
            await transport.publish("nowhere", b"x", {})
        with pytest.raises(BrokerUnavailable, match="topic nowhere"):
            await transport.check("nowhere")
        await transport.check("requests")
    finally:
        await transport.close()


async def test_an_unreachable_broker_is_broker_unavailable_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nobody there
    transport = PubSubTransport("nobody", timeout_s=1)
    started = time.monotonic()
    results = await asyncio.gather(
        *(transport.publish("requests", b"x", {}) for _ in range(3)), return_exceptions=True
    )
    took = time.monotonic() - started
    await transport.close()
    assert all(isinstance(result, BrokerUnavailable) for result in results)
    assert "cannot publish to requests" in str(results[0])
    assert took < 3


def test_publish_requests_keep_within_pubsub_s_limits() -> None:
    """At most 1,000 messages and 10 MB in one Publish request."""
    loop = asyncio.new_event_loop()
    try:

        def pending(count: int, size: int) -> list[tuple[PubsubMessage, asyncio.Future[str]]]:
            return [(PubsubMessage(data=b"x" * size), loop.create_future()) for _ in range(count)]

        assert [len(r) for r in batches(pending(2500, 10))] == [
            MAX_BATCH_MESSAGES,
            MAX_BATCH_MESSAGES,
            500,
        ]
        assert [len(r) for r in batches(pending(5, 4_000_000))] == [2, 2, 1]
        assert [len(r) for r in batches(pending(1, MAX_MESSAGE_BYTES))] == [1]
    finally:
        loop.close()

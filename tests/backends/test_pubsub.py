"""The Pub/Sub transport against the real emulator: batching in the loop, limits, failures."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any

import pytest
from google.pubsub_v1.types import PublishRequest, PublishResponse

from service.backends.pubsub import MAX_BATCH_MESSAGES, Batch, PubSubTransport, message_size
from service.backends.transport import MAX_MESSAGE_BYTES
from service.dev.emulator import Emulator, EmulatorAdmin, free_port
from service.errors import BrokerUnavailable


@pytest.fixture
def admin(emulator: Emulator) -> EmulatorAdmin:
    admin = EmulatorAdmin(emulator.host, f"pubsub-{uuid.uuid4().hex[:8]}")
    admin.topic("requests")
    admin.pull_subscription("requests-pull", "requests")
    return admin


@pytest.mark.emulator
async def test_concurrent_publishes_each_get_their_id_and_arrive_whole(
    admin: EmulatorAdmin,
) -> None:
    transport = PubSubTransport(admin.project, emulator_host=admin.host)
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
    transport = PubSubTransport(admin.project, emulator_host=admin.host)
    with pytest.raises(ValueError, match="Pub/Sub takes 10000000"):
        await transport.publish("requests", b"x" * (MAX_MESSAGE_BYTES + 1), {})
    await transport.close()
    assert admin.pull("requests-pull") == []


@pytest.mark.emulator
async def test_an_unknown_topic_is_broker_unavailable(admin: EmulatorAdmin) -> None:
    transport = PubSubTransport(admin.project, emulator_host=admin.host)
    try:
        with pytest.raises(BrokerUnavailable, match="cannot publish to nowhere"):
            await transport.publish("nowhere", b"x", {})
        with pytest.raises(BrokerUnavailable, match="topic nowhere"):
            await transport.check("nowhere")
        await transport.check("requests")
    finally:
        await transport.close()


@pytest.mark.timing
async def test_an_unreachable_broker_is_broker_unavailable_within_the_timeout() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    transport = PubSubTransport("nobody", timeout_s=1, emulator_host=nobody)
    started = time.monotonic()
    results = await asyncio.gather(
        *(transport.publish("requests", b"x", {}) for _ in range(3)), return_exceptions=True
    )
    took = time.monotonic() - started
    await transport.close()
    assert all(isinstance(result, BrokerUnavailable) for result in results)
    assert "cannot publish to requests" in str(results[0])
    assert took < 3


@pytest.mark.emulator
async def test_more_than_one_request_s_worth_goes_out_in_several(admin: EmulatorAdmin) -> None:
    """2,500 messages (1,000 a request) and three of 4 MB (10 MB a request) in one turn."""
    transport = PubSubTransport(admin.project, emulator_host=admin.host)
    try:
        small = [transport.publish("requests", b"s", {}) for _ in range(2500)]
        large = [transport.publish("requests", b"L" * 4_000_000, {}) for _ in range(3)]
        ids = await asyncio.gather(*small, *large)
    finally:
        await transport.close()
    assert len(set(ids)) == 2503


@pytest.mark.emulator
async def test_what_is_published_while_requests_are_in_flight_goes_out_in_the_next(
    admin: EmulatorAdmin,
) -> None:
    """Under load requests grow instead of multiplying: each costs CPU however small.

    The first request is held until the hundred are published (each in a turn of its
    own), as a slow broker would: they all go out in the next request.
    """
    transport = PubSubTransport(admin.project, max_in_flight=1, emulator_host=admin.host)
    client = transport._publisher()
    sizes: list[int] = []
    publish = client.publish
    all_published = asyncio.Event()

    async def counting(request: PublishRequest, **kwargs: Any) -> PublishResponse:
        sizes.append(len(request.messages))
        if len(sizes) == 1:
            await all_published.wait()
        return await publish(request=request, **kwargs)

    client.publish = counting  # type: ignore[method-assign]
    try:
        first = asyncio.create_task(transport.publish("requests", b"first", {}))
        while not sizes:  # the first request is on its way
            await asyncio.sleep(0)
        later = []
        for n in range(100):  # one at a time, each in a turn of its own
            later.append(asyncio.create_task(transport.publish("requests", b"%d" % n, {})))
            await asyncio.sleep(0)
        all_published.set()
        ids = await asyncio.gather(first, *later)
    finally:
        await transport.close()
    assert len(set(ids)) == 101
    assert sizes == [1, 100]


def test_a_batch_takes_at_most_1000_messages_and_10_mb() -> None:
    batch = Batch("projects/p/topics/t")
    assert batch.fits(MAX_MESSAGE_BYTES) and not batch.fits(MAX_MESSAGE_BYTES + 1)
    loop = asyncio.new_event_loop()
    try:
        for _ in range(MAX_BATCH_MESSAGES):
            batch.add(b"x", {"k": "v"}, loop.create_future())
    finally:
        loop.close()
    assert batch.size == 3 * MAX_BATCH_MESSAGES == message_size(b"x", {"k": "v"}) * 1000
    assert not batch.fits(1)
    assert len(batch.raw.messages) == MAX_BATCH_MESSAGES

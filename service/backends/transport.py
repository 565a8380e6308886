"""Transports: where messages are published, and how requests reach the push handler.

`PubSubTransport` (service/backends/pubsub.py) publishes to Google Pub/Sub (or its
emulator, through PUBSUB_EMULATOR_HOST); Pub/Sub then pushes requests to POST /pubsub/push.
`InProcessTransport` needs no cloud: a request published to the orchestration
topic is handed to the same push handler, and an event published to a trigger's
topic to its trigger (service/api/events.py), with the same ack/nack rules (a
non-2xx answer is redelivered with backoff, up to MAX_DELIVERY_ATTEMPTS).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import itertools
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from service.bounds import MAX_PAYLOAD_BYTES
from service.execution import now
from service.messages import PushEnvelope, PushMessage
from service.retry import RetryPolicy

log = structlog.get_logger(__name__)

# Pub/Sub refuses a publish request over 10 MB (data, attributes and all).
MAX_MESSAGE_BYTES = MAX_PAYLOAD_BYTES

Deliver = Callable[[PushEnvelope], Awaitable[int]]


class Transport(Protocol):
    """Publishes messages to topics; the seam between the service and its broker."""

    async def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        """Publish and wait until the broker has the message; returns its message id."""

    async def check(self, topic: str) -> None:
        """Raise BrokerUnavailable unless the broker is reachable and has `topic`."""

    def subscribe(self, topic: str, deliver: Deliver) -> None:
        """Hand messages of `topic` to `deliver` (only where the transport pushes itself)."""

    async def close(self) -> None: ...


class InProcessTransport:
    """Topics in this process: for a newcomer's laptop and for tests, never for production.

    Messages of a subscribed topic are delivered at once, concurrently, to each of its
    subscribers (as to each subscription of a Pub/Sub topic); those of a topic nobody
    subscribed are kept (the last KEEP_PER_TOPIC of each) so that they can be inspected.
    Undelivered messages are lost when the process stops.
    """

    MAX_DELIVERY_ATTEMPTS = 5
    KEEP_PER_TOPIC = 1000
    REDELIVERY = RetryPolicy(
        maximum_attempts=MAX_DELIVERY_ATTEMPTS, initial_interval=1.0, maximum_interval=10.0
    )

    def __init__(self) -> None:
        self._subscribers: defaultdict[str, list[Deliver]] = defaultdict(list)
        self._deliveries: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self.published: defaultdict[str, deque[tuple[bytes, dict[str, str]]]] = defaultdict(
            lambda: deque(maxlen=self.KEEP_PER_TOPIC)
        )

    async def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        if len(data) > MAX_MESSAGE_BYTES:  # as Pub/Sub's client does
            raise ValueError(f"a message of {len(data)} bytes: Pub/Sub takes {MAX_MESSAGE_BYTES}")
        message_id = str(next(self._ids))
        subscribers = self._subscribers.get(topic)
        if not subscribers:
            self.published[topic].append((data, attributes))
            return message_id
        envelope = PushEnvelope(
            message=PushMessage(
                data=base64.b64encode(data).decode(),
                attributes=attributes,
                message_id=message_id,
                publish_time=now().isoformat(),
            ),
            subscription=f"in-process/{topic}",
        )
        for deliver in subscribers:
            # In a context of its own, as a push is: nothing the publisher bound (its log
            # fields, its span) leaks into the delivery; the trace goes in the attributes.
            task = asyncio.create_task(
                self._deliver(deliver, envelope), context=contextvars.Context()
            )
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
        return message_id

    async def check(self, topic: str) -> None:
        return None

    def subscribe(self, topic: str, deliver: Deliver) -> None:
        self._subscribers[topic].append(deliver)

    async def close(self) -> None:
        for task in self._deliveries:
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)

    async def _deliver(self, deliver: Deliver, envelope: PushEnvelope) -> None:
        for attempt in range(1, self.MAX_DELIVERY_ATTEMPTS + 1):
            status = await deliver(envelope.model_copy(update={"delivery_attempt": attempt}))
            if 200 <= status < 300:
                return
            if attempt < self.MAX_DELIVERY_ATTEMPTS:
                await asyncio.sleep(self.REDELIVERY.delay(attempt))
        log.error(
            "message dead-lettered",
            message_id=envelope.message.message_id,
            attempts=self.MAX_DELIVERY_ATTEMPTS,
        )

"""Google Cloud Pub/Sub (or its emulator, through PUBSUB_EMULATOR_HOST), publishing in the loop.

google-cloud-pubsub's own asyncio client (`PublisherAsyncClient`, gRPC on asyncio),
with the batching done here, as a group commit: at most MAX_REQUESTS_IN_FLIGHT
Publish requests per topic; what is published meanwhile waits for the next one (up
to 1,000 messages and MAX_MESSAGE_BYTES a request; more make more requests). Idle,
a message goes out at once; loaded, requests grow instead of multiplying: one costs
~0.6 ms of CPU however few messages it carries, so one request per message falls
over near 1,000 req/s (bench/publish.py, `--concurrency 1`). Messages are raw
protobuf, and each caller awaits its own message id. The threaded `PublisherClient`
hands each message and each batch between threads: about twice the CPU per message.

A publish returns once the broker has the message; any failure, or no id within
`timeout_s` of the call (queueing included), is BrokerUnavailable. A message whose
caller gives up while it still waits for a request is taken out of its batch, so a
refused publish is never sent later: the front door's 503 means "will not run". A
request carries its oldest message's deadline and is not sent with less than
MIN_REQUEST_S of it left; one the broker does not answer in time is cancelled, and
only then is the outcome unknown (the broker may have taken it before the cut).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import google.auth.exceptions
import grpc
from google.api_core import exceptions as google_exceptions
from google.pubsub_v1 import PublisherAsyncClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport
from google.pubsub_v1.types import PublishRequest

from service.backends.transport import MAX_MESSAGE_BYTES, Deliver
from service.errors import BrokerUnavailable

PUBLISH_TIMEOUT_S = 10.0
CHECK_TIMEOUT_S = 5.0
MAX_BATCH_MESSAGES = 1000  # Pub/Sub's limit per Publish request
MAX_REQUESTS_IN_FLIGHT = 2  # per topic
MIN_REQUEST_S = 0.5

_RawPublishRequest: Any = PublishRequest.pb()


@dataclass
class Batch:
    """One Publish request being filled: raw protobuf (proto-plus costs ~30 µs a message)."""

    path: str  # projects/P/topics/T
    deadline: float = float("inf")  # loop time by which its oldest caller must have an answer
    raw: Any = None
    futures: list[asyncio.Future[str]] = field(default_factory=list)
    size: int = 0  # an upper bound once a message is withdrawn
    sent: bool = False

    def __post_init__(self) -> None:
        self.raw = _RawPublishRequest(topic=self.path)

    def fits(self, size: int) -> bool:
        return len(self.futures) < MAX_BATCH_MESSAGES and self.size + size <= MAX_MESSAGE_BYTES

    def add(self, data: bytes, attributes: dict[str, str], future: asyncio.Future[str]) -> None:
        self.raw.messages.add(data=data, attributes=attributes)
        self.futures.append(future)
        self.size += message_size(data, attributes)

    def withdraw(self, future: asyncio.Future[str]) -> bool:
        """Take `future`'s message out unless the request went: whether it was taken out."""
        if self.sent or future.done() or future not in self.futures:
            return False  # on its way, or already answered (failed unsent, say)
        index = self.futures.index(future)
        del self.raw.messages[index]
        del self.futures[index]
        return True

    def fail(self, error: Exception) -> None:
        for future in self.futures:
            if not future.done():  # its caller may have gone (a cancelled request)
                future.set_exception(error)


@dataclass
class _Topic:
    """One topic's publishing: batches waiting, requests in flight, a send scheduled."""

    name: str
    path: str  # projects/P/topics/T
    pending: list[Batch] = field(default_factory=list)
    in_flight: int = 0
    scheduled: bool = False


class PubSubTransport:
    """Google Cloud Pub/Sub; subscriptions are push subscriptions set up outside."""

    def __init__(
        self,
        project: str,
        timeout_s: float = PUBLISH_TIMEOUT_S,
        max_in_flight: int = MAX_REQUESTS_IN_FLIGHT,
        emulator_host: str | None = None,
    ) -> None:
        self._project = project
        self._timeout_s = timeout_s
        self._max_in_flight = max_in_flight
        self._emulator_host = emulator_host
        self._client: PublisherAsyncClient | None = None
        self._topics: dict[str, _Topic] = {}
        self._requests: set[asyncio.Task[None]] = set()

    async def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        if len(data) > MAX_MESSAGE_BYTES:
            raise ValueError(f"a message of {len(data)} bytes: Pub/Sub takes {MAX_MESSAGE_BYTES}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        future: asyncio.Future[str] = loop.create_future()
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic(topic, self._path(topic))
        pending = state.pending
        if not pending or not pending[-1].fits(message_size(data, attributes)):
            pending.append(Batch(state.path, deadline))
        batch = pending[-1]
        batch.add(data, attributes, future)
        if not state.scheduled and state.in_flight < self._max_in_flight:
            state.scheduled = True
            loop.call_soon(self._send_pending, state)  # after every publish of this turn
        try:
            await asyncio.wait({future}, timeout=deadline - loop.time())
        except asyncio.CancelledError:
            _withdraw(state, batch, future)  # its caller is gone: nobody would hear of it
            raise
        if not future.done() and _withdraw(state, batch, future):
            raise BrokerUnavailable(f"cannot publish to {topic}: no answer in time; not sent")
        return await future  # in flight: its request ends by its own deadline

    async def check(self, topic: str) -> None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._publisher().get_topic(topic=self._path(topic))
        except (google_exceptions.GoogleAPIError, TimeoutError) as exc:
            raise BrokerUnavailable(f"topic {topic}: {_describe(exc)}") from exc

    def subscribe(self, topic: str, deliver: Deliver) -> None:
        """Pub/Sub pushes to /pubsub/push (and to each trigger's endpoint) itself: nothing
        to do in-process."""

    async def close(self) -> None:
        await asyncio.gather(*self._requests, return_exceptions=True)
        if self._client is not None:
            await self._client.transport.close()  # type: ignore[no-untyped-call]
            self._client = None

    def _publisher(self) -> PublisherAsyncClient:
        """Made on first use, inside the running loop: a gRPC asyncio channel belongs to it."""
        if self._client is None:
            if self._emulator_host:
                channel = grpc.aio.insecure_channel(self._emulator_host)
                transport = PublisherGrpcAsyncIOTransport(channel=channel)
                self._client = PublisherAsyncClient(transport=transport)
            else:
                try:  # Application Default Credentials: the metadata server on Cloud Run
                    self._client = PublisherAsyncClient()
                except google.auth.exceptions.DefaultCredentialsError as exc:
                    raise BrokerUnavailable(f"no Google credentials for Pub/Sub: {exc}") from None
        return self._client

    def _path(self, topic: str) -> str:
        return f"projects/{self._project}/topics/{topic}"

    def _send_pending(self, state: _Topic) -> None:
        state.scheduled = False
        pending = state.pending
        now = asyncio.get_running_loop().time()
        while pending and state.in_flight < self._max_in_flight:
            batch = pending.pop(0)
            if batch.deadline - now < MIN_REQUEST_S:
                # Its oldest caller is about to give up: sent now, it could only be cut off
                # on the way, its outcome unknown. Not sending it keeps "refused" true.
                refused = f"cannot publish to {state.name}: no answer in time; not sent"
                batch.fail(BrokerUnavailable(refused))
                continue
            batch.sent = True
            state.in_flight += 1
            task = asyncio.create_task(self._send(state, batch))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    async def _send(self, state: _Topic, batch: Batch) -> None:
        try:
            await self._publish(state.name, batch)
        finally:
            state.in_flight -= 1
            self._send_pending(state)  # what queued meanwhile goes out now

    async def _publish(self, topic: str, batch: Batch) -> None:
        """One Publish request; each message's future gets its id, or the request's error."""
        try:
            async with asyncio.timeout_at(batch.deadline):
                response = await self._publisher().publish(request=PublishRequest.wrap(batch.raw))
        except Exception as exc:  # every caller must hear of it, whatever it is
            if isinstance(exc, TimeoutError):
                exc = BrokerUnavailable(
                    f"cannot publish to {topic}: no answer in time (the broker may have it)"
                )
            elif isinstance(exc, google_exceptions.GoogleAPIError):
                exc = BrokerUnavailable(f"cannot publish to {topic}: {exc}")
            batch.fail(exc)
            return
        ids = list(response.message_ids)
        if len(ids) != len(batch.futures):
            count = f"{len(ids)} ids for {len(batch.futures)} messages"
            batch.fail(BrokerUnavailable(f"cannot publish to {topic}: the broker answered {count}"))
            return
        for future, message_id in zip(batch.futures, ids, strict=True):
            if not future.done():
                future.set_result(message_id)


def _withdraw(state: _Topic, batch: Batch, future: asyncio.Future[str]) -> bool:
    """Take `future`'s message out of its unsent batch (dropping the batch once empty)."""
    if not batch.withdraw(future):
        return False
    if not batch.futures:
        state.pending.remove(batch)
    return True


def message_size(data: bytes, attributes: dict[str, str]) -> int:
    """What a message counts against a Publish request's 10 MB."""
    return len(data) + sum(len(key) + len(value) for key, value in attributes.items())


def _describe(exc: Any) -> str:
    return "no answer in time" if isinstance(exc, TimeoutError) else str(exc)

"""The store's hot path on the wire: raw protobuf Firestore RPCs, as the client makes them.

google-cloud-firestore's async client spends ~1 ms of CPU on a write or a read (its
proto-plus messages, document snapshots, retry wrappers, and a logging interceptor on
its channel); the same RPC as raw protobuf here, on a channel made the way the client
makes its own and with the same metadata, costs a third of that (bench/storage.py).
The executions' claim, checkpoints and saves, the front door's `queued` record, the
timers' writes and the cache go this way; queries, the operators' transactions and
everything else stay on the client.

    fill(value, x) / item(value)    a python value into a `Value` protobuf, and back
    python(fields)                  a document's fields as a dict (aware datetimes)
    write(...) / deletion(...)      a Write, with its precondition
    Wire.get(name)                  one document (fields, update_time), or None
    Wire.write(write)               one write, group-committed; its update time

A write's precondition (`exists`, `update_time`) makes a read-decide-write safe without
a transaction: a write that lost to another is refused (FailedPrecondition, or
AlreadyExists for a create), and the caller reads again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import grpc
from google.api_core import exceptions as google_exceptions
from google.cloud.firestore_v1 import types
from google.cloud.firestore_v1.services.firestore.transports.grpc_asyncio import (
    FirestoreGrpcAsyncIOTransport,
)
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from service.backends.firestore_layout import COMMIT_BYTES

Value: Any = types.Value.pb()
Document: Any = types.Document.pb()
Write: Any = types.Write.pb()
_BatchWrite: Any = types.BatchWriteRequest.pb()
_BatchWritten: Any = types.BatchWriteResponse.pb()
_Get: Any = types.GetDocumentRequest.pb()
_NULL = struct_pb2.NullValue.NULL_VALUE


def fill(value: Any, item: Any) -> None:
    """Set the `Value` protobuf `value` to the python `item` (str, number, bool, None,
    datetime, dict, list)."""
    if item is None:
        value.null_value = _NULL
    elif isinstance(item, bool):
        value.boolean_value = item
    elif isinstance(item, int):
        value.integer_value = item
    elif isinstance(item, float):
        value.double_value = item
    elif isinstance(item, str):
        value.string_value = str(item)  # a StrEnum's value
    elif isinstance(item, datetime):
        value.timestamp_value.FromDatetime(item.astimezone(UTC))
    elif isinstance(item, Mapping):
        into = value.map_value.fields
        for key, inner in item.items():
            fill(into[key], inner)
        if not item:
            value.map_value.SetInParent()
    elif isinstance(item, list | tuple):
        array = value.array_value
        array.SetInParent()
        for inner in item:
            fill(array.values.add(), inner)
    elif isinstance(item, bytes):
        value.bytes_value = item
    else:
        raise TypeError(f"no Firestore value for {type(item).__name__}")


def item(value: Any) -> Any:
    """The python value of a `Value` protobuf."""
    kind = value.WhichOneof("value_type")
    if kind == "string_value":
        return value.string_value
    if kind == "map_value":
        return python(value.map_value.fields)
    if kind == "timestamp_value":
        return value.timestamp_value.ToDatetime(tzinfo=UTC)
    if kind == "null_value" or kind is None:
        return None
    if kind == "array_value":
        return [item(inner) for inner in value.array_value.values]
    return getattr(value, kind)  # boolean, integer, double, bytes


def python(fields: Any) -> dict[str, Any]:
    """A document's (or a map's) fields as a dict."""
    return {key: item(value) for key, value in fields.items()}


def write(
    name: str,
    values: Mapping[str, Any],
    mask: Iterable[str] | None = None,
    exists: bool | None = None,
    update_time: Timestamp | None = None,
) -> Any:
    """A write of `values` (names at the top level, nested dicts are maps) to document
    `name`; with `mask` (field paths) only those fields change, else the document is
    replaced. Preconditions: `exists`, or the document's `update_time`."""
    change = Write()
    document = change.update
    document.name = name
    for key, inner in values.items():
        fill(document.fields[key], inner)
    if mask is not None:
        change.update_mask.field_paths.extend(mask)
    if update_time is not None:
        change.current_document.update_time.CopyFrom(update_time)
    elif exists is not None:
        change.current_document.exists = exists
    return change


def deletion(name: str, update_time: Timestamp) -> Any:
    """Delete document `name` if it is still at `update_time`."""
    change = Write()
    change.delete = name
    change.current_document.update_time.CopyFrom(update_time)
    return change


# The client's own: keepalive, and messages of any size (the commits bound their own).
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]
MAX_BATCH_WRITES = 500  # Firestore's limit per BatchWrite request
MAX_REQUESTS_IN_FLIGHT = 2
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
# What a conditioned write that lost to another's raises.
LOST_RACE = (google_exceptions.FailedPrecondition, google_exceptions.AlreadyExists)


def later(one: Timestamp | None, other: Timestamp) -> Timestamp:
    """The later of two update times of one document."""
    if one is None or (other.seconds, other.nanos) > (one.seconds, one.nanos):
        return other
    return one


@dataclass
class _Batch:
    """Writes of one BatchWrite request, each with its caller's future (one per document)."""

    request: Any
    futures: list[asyncio.Future[Timestamp]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    timeout_s: float = 0.0
    size: int = 0

    def takes(self, name: str, size: int) -> bool:
        """Whether a write of `size` bytes to document `name` may join this request."""
        fits = len(self.futures) < MAX_BATCH_WRITES and self.size + size <= COMMIT_BYTES
        return name not in self.names and (fits or not self.futures)


class Wire:
    """Reads and writes as raw protobuf, with the metadata `client` sends, on a channel
    made as its own is (on first use, in the running loop).

    Writes are a group commit, as the publisher's messages are: the writes of one loop
    turn go in one BatchWrite request (each applied, or refused, on its own; at most one
    per document and MAX_BATCH_WRITES a request), at most MAX_REQUESTS_IN_FLIGHT at a
    time, what comes meanwhile in the next. Idle, a write goes out at once; loaded,
    requests grow instead of multiplying: a request costs ~0.3 ms of CPU however few
    writes it carries, 20 writes in one ~0.05 ms each (PERFORMANCE.md). A request holds
    at most COMMIT_BYTES of writes (the emulator's gRPC server takes 4 MiB).
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self.database = client._database_string
        self.root = f"{self.database}/documents"
        params = f"database={quote(self.database, safe='')}"
        self._metadata = (*client._rpc_metadata, ("x-goog-request-params", params))
        self._calls: tuple[Any, Any] | None = None
        self._open: Any = None  # the channel, once made (in the running loop)
        self._pending: list[_Batch] = []
        self._in_flight = 0
        self._scheduled = False
        self._requests: set[asyncio.Task[None]] = set()

    def path(self, collection: str, document: str) -> str:
        return f"{self.root}/{collection}/{document}"

    async def get(self, name: str, timeout_s: float) -> Any | None:
        """The document (fields, update_time), or None if there is none."""
        get, _ = self._stubs()
        try:
            return await get(_Get(name=name), metadata=self._metadata, timeout=timeout_s)
        except Exception as exc:
            error = _google_error(exc)
            if isinstance(error, google_exceptions.NotFound):
                return None
            raise error from exc

    async def write(self, change: Any, timeout_s: float) -> Timestamp:
        """Apply one write (with the others of this loop turn); its update time, or its
        error as google.api_core's (FailedPrecondition: its precondition did not hold)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Timestamp] = loop.create_future()
        name = change.update.name or change.delete
        size = change.ByteSize()
        batch = self._pending[-1] if self._pending else None
        if batch is None or not batch.takes(name, size):
            batch = _Batch(_BatchWrite(database=self.database), timeout_s=timeout_s)
            self._pending.append(batch)
        batch.request.writes.append(change)
        batch.futures.append(future)
        batch.names.add(name)
        batch.size += size
        if not self._scheduled and self._in_flight < MAX_REQUESTS_IN_FLIGHT:
            self._scheduled = True
            loop.call_soon(self._send_pending)  # after every write of this turn
        return await future

    async def close(self) -> None:
        await asyncio.gather(*self._requests, return_exceptions=True)
        if self._open is not None:
            await self._open.close()

    def _send_pending(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < MAX_REQUESTS_IN_FLIGHT:
            self._in_flight += 1
            task = asyncio.create_task(self._send(self._pending.pop(0)))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    async def _send(self, batch: _Batch) -> None:
        _, batch_write = self._stubs()
        try:
            answer = await batch_write(
                batch.request, metadata=self._metadata, timeout=batch.timeout_s
            )
        except Exception as exc:  # every caller hears of it, whatever it is
            error = _google_error(exc)
            for future in batch.futures:
                if not future.done():
                    future.set_exception(error)
            return
        finally:
            self._in_flight -= 1
            self._send_pending()  # what came meanwhile goes out now
        for future, result, status in zip(
            batch.futures, answer.write_results, answer.status, strict=True
        ):
            if future.done():
                continue  # its caller gave up
            if status.code == 0:
                future.set_result(result.update_time)
            else:
                code = _STATUS_CODES.get(status.code, grpc.StatusCode.UNKNOWN)
                refused = google_exceptions.from_grpc_status(code, status.message)  # type: ignore[no-untyped-call]
                future.set_exception(refused)

    def _channel(self) -> Any:
        """A channel of our own, as the client makes its own (credentials, or the emulator's
        plain connection), without the logging interceptor the client's GAPIC transport
        puts on its channel: that interceptor cost ~150 us of CPU a call (cProfile)."""
        client = self._client
        if client._emulator_host is not None:
            return grpc.aio.insecure_channel(client._emulator_host, options=CHANNEL_OPTIONS)
        return FirestoreGrpcAsyncIOTransport.create_channel(
            client._target, credentials=client._credentials, options=CHANNEL_OPTIONS
        )

    def _stubs(self) -> tuple[Any, Any]:
        if self._calls is None:
            channel = self._open = self._channel()
            self._calls = (
                channel.unary_unary(
                    "/google.firestore.v1.Firestore/GetDocument",
                    request_serializer=_Get.SerializeToString,
                    response_deserializer=Document.FromString,
                ),
                channel.unary_unary(
                    "/google.firestore.v1.Firestore/BatchWrite",
                    request_serializer=_BatchWrite.SerializeToString,
                    response_deserializer=_BatchWritten.FromString,
                ),
            )
        return self._calls


def _google_error(exc: Exception) -> Exception:
    """A gRPC error as google.api_core's (what the client raises), else as it is."""
    if isinstance(exc, grpc.RpcError):
        error: Exception = google_exceptions.from_grpc_error(exc)  # type: ignore[no-untyped-call]
        return error
    return exc

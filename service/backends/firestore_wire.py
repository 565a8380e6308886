"""The store's hot path on the wire: raw protobuf Firestore RPCs on the client's own channel.

google-cloud-firestore's async client spends ~1 ms of CPU on a write or a read (its
proto-plus messages, document snapshots, retry wrappers); the same RPC made here as
raw protobuf on the same gRPC channel, with the same metadata, costs ~0.3-0.5 ms
(bench/storage.py). The executions' claim, checkpoints and saves, the front door's
`queued` record, the timers' writes and the cache's reads go this way; queries,
transactions of the operators' endpoints and everything else stay on the client.

    fields(...)         python values as Firestore `Value`s (a dict is a map)
    python(fields)      and back: timestamps as aware datetimes
    Wire.get(path)      one document (fields and update time), or None
    Wire.commit(writes) one atomic commit (of `write`s and `deletion`s); each one's
                        update time

A write's precondition (`exists`, `update_time`) makes a read-decide-write safe without
a transaction: a write that lost to another is refused (FailedPrecondition, or
AlreadyExists for a create), and the caller reads again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import grpc
from google.api_core import exceptions as google_exceptions
from google.cloud.firestore_v1 import types
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

Value: Any = types.Value.pb()
Document: Any = types.Document.pb()
Write: Any = types.Write.pb()
_Commit: Any = types.CommitRequest.pb()
_CommitAnswer: Any = types.CommitResponse.pb()
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


# What a conditioned write that lost to another's raises.
LOST_RACE = (google_exceptions.FailedPrecondition, google_exceptions.AlreadyExists)


def later(one: Timestamp | None, other: Timestamp) -> Timestamp:
    """The later of two update times of one document."""
    if one is None or (other.seconds, other.nanos) > (one.seconds, one.nanos):
        return other
    return one


class Wire:
    """Commit and get as raw protobuf on `client`'s gRPC channel (made on first use,
    in the running loop), with the metadata the client sends."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.database = client._database_string
        self.root = f"{self.database}/documents"
        params = f"database={quote(self.database, safe='')}"
        self._metadata = (*client._rpc_metadata, ("x-goog-request-params", params))
        self._calls: tuple[Any, Any] | None = None

    def path(self, collection: str, document: str) -> str:
        return f"{self.root}/{collection}/{document}"

    async def get(self, name: str, timeout_s: float) -> Any | None:
        """The document (fields, update_time), or None if there is none."""
        _, get = self._stubs()
        try:
            return await get(_Get(name=name), metadata=self._metadata, timeout=timeout_s)
        except Exception as exc:
            error = _google_error(exc)
            if isinstance(error, google_exceptions.NotFound):
                return None
            raise error from exc

    async def commit(self, writes: list[Any], timeout_s: float) -> list[Timestamp]:
        """Commit `writes` atomically; each one's update time."""
        commit, _ = self._stubs()
        request = _Commit(database=self.database)
        request.writes.extend(writes)
        try:
            answer = await commit(request, metadata=self._metadata, timeout=timeout_s)
        except Exception as exc:
            raise _google_error(exc) from exc
        return [result.update_time for result in answer.write_results]

    def _stubs(self) -> tuple[Any, Any]:
        if self._calls is None:
            channel = self._client._firestore_api.transport.grpc_channel
            self._calls = (
                channel.unary_unary(
                    "/google.firestore.v1.Firestore/Commit",
                    request_serializer=_Commit.SerializeToString,
                    response_deserializer=_CommitAnswer.FromString,
                ),
                channel.unary_unary(
                    "/google.firestore.v1.Firestore/GetDocument",
                    request_serializer=_Get.SerializeToString,
                    response_deserializer=Document.FromString,
                ),
            )
        return self._calls


def _google_error(exc: Exception) -> Exception:
    """A gRPC error as google.api_core's (what the client raises), else as it is."""
    if isinstance(exc, grpc.RpcError):
        error: Exception = google_exceptions.from_grpc_error(exc)  # type: ignore[no-untyped-call]
        return error
    return exc

"""The execution store shared by every instance, on Firestore.

One head document per execution, always far under Firestore's 1 MiB:

    executions/{id}
        flow, status, requested_at, started_at,     the summary: what `list` queries
        finished_at, duration_ms, error             and reads (a projection)
        input, steps.NAME, result                   "slots": JSON text of the input, of
                                                    each step's outcome and of the flow's
                                                    result, inline up to INLINE_BYTES,
                                                    else a pointer {parts, digest}
        webhook_url                                 kept for re-drives
        owner, lease_until, delivered,              the lease, and whether the result
        cancel_requested, updated_at, expire_at     went out; an operator's cancel
    executions/{id}/execution-parts/{slot}.{digest}.{n}
                                                    a larger slot in chunks of PART_BYTES,
                                                    named by its content, written before
                                                    the pointer to them (so never torn)

Slots are JSON text, not Firestore maps: a map costs an index entry per leaf (a
400-item answer passes Firestore's 40,000 per document), nests at most 20 deep, and
counts against the 1 MiB with every parallel step's answer. Measured by
bench/storage.py: a 3 MB answer could not be stored before; now it is 4 part
documents and one pointer.

A claim is a transaction: it creates the head, or starts a `queued` one, or
takes over one whose lease has expired, or reports it running or finished.
Cancels, re-drives and the save of an ended run (which reads `cancel_requested`)
are transactions too; running executions with a cancel asked are found by one
query (`cancel_requests`), not one read per execution. Step outcomes are written
field by field (`steps.NAME`), so parallel steps never overwrite each other.
`expire_at` lets a Firestore TTL policy delete old executions and their parts
(infra/setup.sh). `emulator_host` (else FIRESTORE_EMULATOR_HOST) points the client
at the emulator.

Every call answers within `timeout_s` (STORE_TIMEOUT_S): the client's own retries
of an unreachable Firestore last minutes, and a transaction cut short awaits its
rollback, so a call runs as a task that is left behind, cancelled, when its time is
up. Errors: InvalidArgument is StoreRefused (no retry can fix it); anything else,
a timeout or a transaction the client gave up (contention, or a rollback that failed
after the real error) is StoreUnavailable, but for a claim, where contention means
that other deliveries are claiming it now.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from service.backends.store import (
    Claim,
    ClaimState,
    ExecutionQuery,
    Page,
    cancel_wins,
    cancelled,
    claimed,
    may_redrive,
    page_key,
    page_token,
)
from service.errors import StoreRefused, StoreUnavailable
from service.execution import Execution, ExecutionStatus, ExecutionSummary, StepResult

CLAIM_ATTEMPTS = 10
STORE_TIMEOUT_S = 10.0
# Each slot inline up to this; with at most MAX_FLOW_STEPS (50) steps a head stays < 1 MiB.
INLINE_BYTES = 16 * 1024
PART_BYTES = 900_000  # a part document's data, under the 1 MiB document limit
# Parts per commit: Firestore takes 10 MiB a request, its emulator's gRPC server 4 MiB
# (a larger commit is refused with 429 "gRPC message exceeds maximum size").
COMMIT_BYTES = 3_000_000
PARTS_TTL_MARGIN = timedelta(hours=1)  # parts outlive the head's last write
# A collection group of its own name, for its TTL policy and index exemption (infra/).
PARTS_COLLECTION = "execution-parts"
REMEMBERED_PARTS = 1000
SUMMARY_FIELDS = tuple(name for name in ExecutionSummary.model_fields if name != "execution_id")
# Everything else a head holds; infra/setup.sh exempts from indexing all but what is queried.
HEAD_FIELDS = (
    *SUMMARY_FIELDS,
    *("input", "steps", "result", "webhook_url", "owner", "lease_until", "delivered"),
    *("cancel_requested", "updated_at", "expire_at"),
)
Parts = dict[str, bytes]


class FirestoreStore:
    """Executions in a Firestore collection, leased by the instance that runs them."""

    def __init__(
        self,
        project: str,
        collection: str,
        ttl: timedelta,
        inline_bytes: int = INLINE_BYTES,
        emulator_host: str | None = None,
        timeout_s: float = STORE_TIMEOUT_S,
    ) -> None:
        if emulator_host:
            self._client = firestore.AsyncClient(
                project=project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            )
            # The client takes the emulator's address from the environment only (when it
            # is made); its channel and credentials follow this attribute (base_client.py).
            self._client._emulator_host = emulator_host
        else:
            self._client = firestore.AsyncClient(project=project)
        self._timeout_s = timeout_s
        self._collection = self._client.collection(collection)
        self._ttl = ttl
        self._inline_bytes = inline_bytes
        # Parts this instance wrote: a document saved again does not write them again.
        self._written: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def enqueue(self, execution: Execution) -> None:
        fields, parts = self._document(execution)
        await self._write_parts(execution.execution_id, parts)
        reference = self._collection.document(execution.execution_id)

        async def create() -> None:
            with contextlib.suppress(google_exceptions.AlreadyExists):  # a copy is stored
                await reference.create(fields)

        await self._call(create())

    async def claim(self, execution: Execution, owner: str, lease_s: float) -> Claim:
        reference = self._collection.document(execution.execution_id)
        fresh, parts = self._document(execution)
        await self._write_parts(execution.execution_id, parts)

        @firestore.async_transactional
        async def claim_in(transaction: Any) -> tuple[ClaimState, dict[str, Any] | None]:
            snapshot = await reference.get(transaction=transaction)
            now = datetime.now(UTC)
            lease = {"owner": owner, "lease_until": now + timedelta(seconds=lease_s)}
            if not snapshot.exists:
                transaction.create(reference, {**fresh, **lease})
                return ClaimState.CLAIMED, None
            data = snapshot.to_dict() or {}
            if data.get("status") == ExecutionStatus.QUEUED:
                started = {"status": ExecutionStatus.RUNNING.value, "started_at": now}
                transaction.update(reference, {**lease, **started})
                return ClaimState.CLAIMED, data
            if data.get("delivered"):
                return ClaimState.FINISHED, data
            lease_until = data.get("lease_until")
            if lease_until is not None and lease_until > now:
                return ClaimState.RUNNING, None
            transaction.update(reference, lease)
            return ClaimState.CLAIMED, data

        try:
            transaction = self._client.transaction(max_attempts=CLAIM_ATTEMPTS)
            state, data = await self._call(claim_in(transaction))
        except _Contended:
            return Claim(ClaimState.RUNNING)  # other deliveries are claiming it now
        if state == ClaimState.RUNNING:
            return Claim(state)
        if data is None:
            return Claim(ClaimState.CLAIMED, execution)
        stored = await self._execution(execution.execution_id, data)
        if state == ClaimState.FINISHED:
            return Claim(ClaimState.FINISHED, stored, delivered=True)
        return claimed(stored, bool(data.get("cancel_requested")))

    async def renew(self, execution_id: str, owner: str, lease_s: float) -> bool:
        reference = self._collection.document(execution_id)

        @firestore.async_transactional
        async def renew_in(transaction: Any) -> bool:
            snapshot = await reference.get(transaction=transaction)
            if not snapshot.exists or snapshot.get("owner") != owner:
                return False
            lease_until = datetime.now(UTC) + timedelta(seconds=lease_s)
            transaction.update(reference, {"lease_until": lease_until})
            return True

        return await self._call(renew_in(self._client.transaction()))  # type: ignore[no-any-return]

    async def save_step(self, execution_id: str, name: str, result: StepResult) -> None:
        value, parts = self._slot(f"step.{name}", result.model_dump_json())
        path = FieldPath("steps", name).to_api_repr()
        fields = {path: value, "updated_at": datetime.now(UTC)}
        await self._write_parts(execution_id, parts)
        await self._call(self._collection.document(execution_id).update(fields))

    async def save(self, execution: Execution, delivered: bool = False) -> None:
        fields, parts = self._document(execution)
        await self._write_parts(execution.execution_id, parts)
        reference = self._collection.document(execution.execution_id)
        if delivered:
            done = {"delivered": True, "owner": None, "lease_until": None}
            await self._call(reference.set(fields | done, merge=True))
            return

        @firestore.async_transactional
        async def save_in(transaction: Any) -> None:
            snapshot = await reference.get(["cancel_requested"], transaction=transaction)
            asked = snapshot.exists and (snapshot.to_dict() or {}).get("cancel_requested")
            cancel_wins(execution, bool(asked))
            summary = execution.summary().model_dump(exclude={"execution_id"})
            transaction.set(reference, fields | summary | {"delivered": False}, merge=True)

        await self._transact(save_in)

    async def release(self, execution_id: str, owner: str) -> None:
        reference = self._collection.document(execution_id)

        @firestore.async_transactional
        async def release_in(transaction: Any) -> None:
            snapshot = await reference.get(transaction=transaction)
            if snapshot.exists and snapshot.get("owner") == owner:
                transaction.update(reference, {"owner": None, "lease_until": None})

        await self._call(release_in(self._client.transaction()))

    async def get(self, execution_id: str) -> Execution | None:
        snapshot = await self._call(self._collection.document(execution_id).get())
        if not snapshot.exists:
            return None
        return await self._execution(execution_id, snapshot.to_dict())

    async def list(self, query: ExecutionQuery) -> Page:
        found = self._collection.select(SUMMARY_FIELDS)
        if query.statuses:
            values = sorted(status.value for status in query.statuses)
            found = found.where(filter=FieldFilter("status", "in", values))
        if query.flow is not None:
            found = found.where(filter=FieldFilter("flow", "==", query.flow))
        if query.since is not None:
            found = found.where(filter=FieldFilter("requested_at", ">=", query.since))
        if query.until is not None:
            found = found.where(filter=FieldFilter("requested_at", "<", query.until))
        found = found.order_by("requested_at", direction="DESCENDING").order_by(
            FieldPath.document_id(), direction="DESCENDING"
        )
        if query.page_token:
            moment, execution_id = page_key(query.page_token)
            last = self._collection.document(execution_id)
            found = found.start_after({"requested_at": moment, FieldPath.document_id(): last})
        snapshots = await self._call(found.limit(query.limit + 1).get())
        page = [
            ExecutionSummary.model_validate({"execution_id": s.id, **s.to_dict()})
            for s in snapshots[: query.limit]
        ]
        more = len(snapshots) > query.limit
        return Page(page, page_token(page[-1]) if more else None)

    async def cancel(self, execution_id: str) -> ExecutionStatus | None:
        reference = self._collection.document(execution_id)

        @firestore.async_transactional
        async def cancel_in(transaction: Any) -> ExecutionStatus | None:
            snapshot = await reference.get(transaction=transaction)
            if not snapshot.exists:
                return None
            execution = await self._execution(execution_id, snapshot.to_dict() or {})
            status = cancelled(execution)
            if status == ExecutionStatus.RUNNING:
                transaction.update(reference, {"cancel_requested": True})
            else:
                summary = execution.summary().model_dump(exclude={"execution_id"})
                transaction.update(reference, summary)
            return status

        return await self._transact(cancel_in)  # type: ignore[no-any-return]

    async def cancel_requests(self) -> set[str]:
        asked = (
            self._collection.where(filter=FieldFilter("cancel_requested", "==", True))
            .where(filter=FieldFilter("status", "==", ExecutionStatus.RUNNING.value))
            .select(["status"])
        )
        return {snapshot.id for snapshot in await self._call(asked.get())}

    async def redrive(self, execution_id: str) -> tuple[Execution, Execution] | None:
        reference = self._collection.document(execution_id)

        @firestore.async_transactional
        async def redrive_in(transaction: Any) -> tuple[Execution, Execution] | None:
            snapshot = await reference.get(transaction=transaction)
            if not snapshot.exists:
                return None
            data = snapshot.to_dict() or {}
            before = await self._execution(execution_id, data)
            may_redrive(before, bool(data.get("delivered")))
            after = before.redriven()
            fields, parts = self._document(after)
            await self._write_parts(execution_id, parts)  # kept outputs: already written
            transaction.set(reference, {**fields, "delivered": False})
            return before, after

        return await self._transact(redrive_in)  # type: ignore[no-any-return]

    async def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    async def _transact(self, function: Any) -> Any:
        """Run a transactional function; Conflict passes through, contention is unavailable."""
        return await self._call(function(self._client.transaction()))

    def _document(self, execution: Execution) -> tuple[dict[str, Any], Parts]:
        """The head's fields for the whole execution, and the parts its slots need."""
        now = datetime.now(UTC)
        fields: dict[str, Any] = {
            **execution.summary().model_dump(exclude={"execution_id"}),
            "webhook_url": execution.webhook_url,
            "updated_at": now,
            "expire_at": now + self._ttl,
        }
        fields["input"], parts = self._slot("input", _json(execution.input))
        fields["steps"] = {}
        for name, result in execution.steps.items():
            fields["steps"][name], more = self._slot(f"step.{name}", result.model_dump_json())
            parts |= more
        fields["result"], more = self._slot("result", _json(execution.result))
        return fields, parts | more

    def _slot(self, name: str, text: str) -> tuple[Any, Parts]:
        """A slot's value in the head (its text, or a pointer) and the parts to write first."""
        data = text.encode()
        if len(data) <= self._inline_bytes:
            return text, {}
        digest = hashlib.blake2b(data, digest_size=12).hexdigest()
        chunks = range(0, len(data), PART_BYTES)
        parts = {f"{name}.{digest}.{n}": data[at : at + PART_BYTES] for n, at in enumerate(chunks)}
        return {"parts": len(parts), "digest": digest}, parts

    async def _write_parts(self, execution_id: str, parts: Parts) -> None:
        todo = {k: data for k, data in parts.items() if (execution_id, k) not in self._written}
        if not todo:
            return
        folder = self._collection.document(execution_id).collection(PARTS_COLLECTION)
        expire_at = datetime.now(UTC) + self._ttl + PARTS_TTL_MARGIN
        for batch_keys in _batches(todo):
            batch = self._client.batch()
            for key in batch_keys:
                batch.set(folder.document(key), {"data": todo[key], "expire_at": expire_at})
            await self._call(batch.commit())
        for key in todo:
            self._written[(execution_id, key)] = None
            if len(self._written) > REMEMBERED_PARTS:
                self._written.popitem(last=False)

    async def _execution(self, execution_id: str, data: dict[str, Any]) -> Execution:
        """The execution a head stands for, its spilled slots read back from their parts."""
        if "input" not in data and "document" in data:
            # Written before this layout (one map per execution): read until its TTL ends.
            return Execution.model_validate(data["document"])
        slots: dict[str, Any] = {"input": data["input"], "result": data.get("result", "null")}
        slots |= {f"step.{name}": value for name, value in data.get("steps", {}).items()}
        pointers = {name: value for name, value in slots.items() if isinstance(value, dict)}
        if pointers:
            folder = self._collection.document(execution_id).collection(PARTS_COLLECTION)
            keys = [
                f"{name}.{pointer['digest']}.{n}"
                for name, pointer in pointers.items()
                for n in range(pointer["parts"])
            ]
            read = await self._call(_read_all(self._client, [folder.document(k) for k in keys]))
            missing = [key for key in keys if key not in read]
            if missing:
                raise StoreUnavailable(f"execution store: part {missing[0]} is missing")
            for name, pointer in pointers.items():
                chunks = (read[f"{name}.{pointer['digest']}.{n}"] for n in range(pointer["parts"]))
                slots[name] = b"".join(chunks).decode()
        steps = {
            name.removeprefix("step."): StepResult.model_validate_json(text)
            for name, text in slots.items()
            if name.startswith("step.")
        }
        summary = {name: data.get(name) for name in SUMMARY_FIELDS}
        execution = Execution.model_validate(
            {
                **summary,
                "execution_id": execution_id,
                "input": _parse(slots["input"]),
                "steps": steps,
                "result": _parse(slots["result"]),
            }
        )
        execution.webhook_url = data.get("webhook_url")
        return execution

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        """Await a call of the client within `timeout_s`, its errors as the store's."""
        call = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait({call}, timeout=self._timeout_s)
        finally:
            if not call.done():  # timed out, or its caller was cancelled
                call.cancel()
                _LEFT_BEHIND.add(call)
                call.add_done_callback(_forget)
        if not call.done():
            raise StoreUnavailable(f"execution store: no answer in {self._timeout_s:g} s")
        try:
            return call.result()
        except Exception as exc:
            raise _store_error(exc) from exc


class _Contended(StoreUnavailable):
    """Firestore gave up a transaction that others kept changing the document under."""


# Calls cut short, still winding down (a transaction's rollback): kept until they end.
_LEFT_BEHIND: set[asyncio.Future[Any]] = set()


def _forget(call: asyncio.Future[Any]) -> None:
    _LEFT_BEHIND.discard(call)
    if not call.cancelled():
        call.exception()  # retrieved: what it raised no longer matters to anyone


def _store_error(exc: Exception) -> Exception:
    """What a failed client call means to the store's callers (the module's docstring)."""
    if isinstance(exc, google_exceptions.InvalidArgument):
        return StoreRefused(f"execution store: {exc}")
    if isinstance(exc, google_exceptions.GoogleAPIError):
        return StoreUnavailable(f"execution store: {exc}")
    if isinstance(exc, ValueError):  # a transaction the client gave up, or its rollback
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, google_exceptions.Aborted):
            return _Contended(f"execution store: {exc}")
        if isinstance(cause, Exception):
            return _store_error(cause)
        return StoreUnavailable(f"execution store: {exc}")
    return exc  # ours (a Conflict, say), or a bug: as it is


async def _read_all(client: Any, references: list[Any]) -> dict[str, bytes]:
    return {
        snapshot.id: snapshot.get("data")
        async for snapshot in client.get_all(references)
        if snapshot.exists
    }


def _batches(parts: Parts) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for key, data in parts.items():
        if batch and size + len(data) > COMMIT_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(key)
        size += len(data)
    if batch:
        yield batch


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _parse(text: str) -> Any:
    return json.loads(text)

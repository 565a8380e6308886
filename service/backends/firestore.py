"""The execution store shared by every instance, on Firestore.

Each execution is one head document, its larger slots in part documents
(service/backends/firestore_layout.py has the picture and the sizes).

A claim is a transaction: it creates the head, or starts a `queued` one, or
takes over one whose lease has expired, or reports it running or finished.
Cancels, re-drives and the save of an ended run (which reads `cancel_requested`)
are transactions too; running executions with a cancel asked are found by one
query (`cancel_requests`), not one read per execution. Step outcomes are written
field by field (`steps.NAME`), so parallel steps never overwrite each other.
`expire_at` lets a Firestore TTL policy delete old executions and their parts
(infra/setup.sh). `emulator_host` (else FIRESTORE_EMULATOR_HOST) points the client
at the emulator.

Every call answers within `timeout_s`, its errors as the store's
(service/backends/firestore_calls.py); a claim given up for contention means that
other deliveries are claiming it now.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from service.backends.firestore_calls import STORE_TIMEOUT_S, Contended, bounded
from service.backends.firestore_layout import (
    INLINE_BYTES,
    PARTS_COLLECTION,
    PARTS_TTL_MARGIN,
    SUMMARY_FIELDS,
    Parts,
    batches,
    from_json,
    slot,
    to_json,
)
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
from service.errors import StoreUnavailable
from service.execution import Execution, ExecutionStatus, ExecutionSummary, StepResult

CLAIM_ATTEMPTS = 10
REMEMBERED_PARTS = 1000


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
        except Contended:
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

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        return await bounded(awaitable, self._timeout_s)

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
        fields["input"], parts = self._slot("input", to_json(execution.input))
        fields["steps"] = {}
        for name, result in execution.steps.items():
            fields["steps"][name], more = self._slot(f"step.{name}", result.model_dump_json())
            parts |= more
        fields["result"], more = self._slot("result", to_json(execution.result))
        return fields, parts | more

    def _slot(self, name: str, text: str) -> tuple[Any, Parts]:
        return slot(name, text, self._inline_bytes)

    async def _write_parts(self, execution_id: str, parts: Parts) -> None:
        todo = {k: data for k, data in parts.items() if (execution_id, k) not in self._written}
        if not todo:
            return
        folder = self._collection.document(execution_id).collection(PARTS_COLLECTION)
        expire_at = datetime.now(UTC) + self._ttl + PARTS_TTL_MARGIN
        for batch_keys in batches(todo):
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
                "input": from_json(slots["input"]),
                "steps": steps,
                "result": from_json(slots["result"]),
            }
        )
        execution.webhook_url = data.get("webhook_url")
        return execution


async def _read_all(client: Any, references: list[Any]) -> dict[str, bytes]:
    return {
        snapshot.id: snapshot.get("data")
        async for snapshot in client.get_all(references)
        if snapshot.exists
    }

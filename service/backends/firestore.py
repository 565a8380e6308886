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
(infra/setup.sh). Waiting executions are found by one query on (status, wake_at)
and handed to one waker each by a write conditioned on the document's update time,
not a transaction; a callback's answer is a transaction on the head. The client,
bounded calls, the parts of large slots and the documents beside the executions
(flow versions, the step cache, the limits' shares) are service/backends/firestore_base.py's.

Every call answers within `timeout_s`, its errors as the store's
(service/backends/firestore_calls.py); a claim given up for contention means that
other deliveries are claiming it now.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from service.backends.firestore_base import LOST_RACE, FirestoreBase
from service.backends.firestore_calls import Contended
from service.backends.firestore_layout import (
    SUMMARY_FIELDS,
    Parts,
    from_json,
    head,
    to_json,
)
from service.backends.store import (
    Answer,
    Claim,
    ClaimState,
    ExecutionQuery,
    Page,
    callback_answer,
    cancel_wins,
    cancelled,
    claimed,
    due_again,
    may_redrive,
    page_key,
    page_token,
)
from service.errors import StoreUnavailable
from service.execution import (
    UNDERWAY,
    Execution,
    ExecutionStatus,
    ExecutionSummary,
    FlowVersion,
    StepResult,
    now,
)
from service.waits import CallbackToken

CLAIM_ATTEMPTS = 10
VERSIONS_READ = 1000  # executions read to count the versions in use


class FirestoreStore(FirestoreBase):
    """Executions in a Firestore collection, leased by the instance that runs them."""

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
            pinned = {
                "flow_version": data.get("flow_version") or execution.flow_version,
                "traceparent": data.get("traceparent") or execution.traceparent,
            }
            if data.get("status") == ExecutionStatus.QUEUED:
                started = {"status": ExecutionStatus.RUNNING.value, "started_at": now}
                transaction.update(reference, {**lease, **started, **pinned})
                return ClaimState.CLAIMED, data
            if data.get("delivered"):
                return ClaimState.FINISHED, data
            lease_until = data.get("lease_until")
            if lease_until is not None and lease_until > now:
                return ClaimState.RUNNING, None
            if data.get("status") == ExecutionStatus.WAITING:
                resumed = {"status": ExecutionStatus.RUNNING.value, "wake_at": None}
                transaction.update(reference, {**lease, **resumed})
                return ClaimState.CLAIMED, data
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
        return claimed(stored, bool(data.get("cancel_requested")), execution)

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
            elif status == ExecutionStatus.WAITING:  # the caller sends its resume
                transaction.update(reference, {"cancel_requested": True, "wake_at": due_again()})
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

    async def redrive(
        self, execution_id: str, moved_to: FlowVersion | None = None
    ) -> tuple[Execution, Execution] | None:
        reference = self._collection.document(execution_id)

        @firestore.async_transactional
        async def redrive_in(transaction: Any) -> tuple[Execution, Execution] | None:
            snapshot = await reference.get(transaction=transaction)
            if not snapshot.exists:
                return None
            data = snapshot.to_dict() or {}
            before = await self._execution(execution_id, data)
            may_redrive(before, bool(data.get("delivered")))
            after = before.redriven(moved_to)
            fields, parts = self._document(after)
            await self._write_parts(execution_id, parts)  # kept outputs: already written
            transaction.set(reference, {**fields, "delivered": False})
            return before, after

        return await self._transact(redrive_in)  # type: ignore[no-any-return]

    async def suspend(self, execution: Execution) -> None:
        fields, parts = self._document(execution)
        await self._write_parts(execution.execution_id, parts)
        reference = self._collection.document(execution.execution_id)

        @firestore.async_transactional
        async def suspend_in(transaction: Any) -> None:
            snapshot = await reference.get(["cancel_requested", "answers"], transaction=transaction)
            data = (snapshot.to_dict() or {}) if snapshot.exists else {}
            answered = set(data.get("answers") or {}) | execution.callbacks.keys()
            execution.suspend(answered, bool(data.get("cancel_requested")))
            summary = execution.summary().model_dump(exclude={"execution_id"})
            ended = {"owner": None, "lease_until": None, "delivered": False}
            transaction.set(reference, fields | summary | ended, merge=True)

        await self._transact(suspend_in)

    async def due(self, limit: int) -> builtins.list[Execution]:
        found = (
            self._collection.where(filter=FieldFilter("status", "==", "waiting"))
            .where(filter=FieldFilter("wake_at", "<=", now()))
            .order_by("wake_at")
            .limit(limit)
        )
        snapshots = await self._call(found.get())

        async def take(snapshot: Any) -> Execution | None:
            # Conditioned on the version read: of several wakers, one moves each timer.
            option = self._client.write_option(last_update_time=snapshot.update_time)
            try:
                await self._call(snapshot.reference.update({"wake_at": due_again()}, option=option))
            except StoreUnavailable as exc:
                if isinstance(exc.__cause__, LOST_RACE):
                    return None  # another waker took it
                raise
            return await self._execution(snapshot.id, snapshot.to_dict() or {})

        taken = await asyncio.gather(*(take(snapshot) for snapshot in snapshots))
        return [execution for execution in taken if execution is not None]

    async def answer(self, token: CallbackToken, body: Any) -> tuple[Answer, Execution | None]:
        reference = self._collection.document(token.execution_id)
        value, parts = self._slot(f"answer.{token.step}", to_json(body))

        @firestore.async_transactional
        async def answer_in(transaction: Any) -> tuple[Answer, Execution | None]:
            snapshot = await reference.get(transaction=transaction)
            if not snapshot.exists:
                return Answer.UNKNOWN, None
            data = snapshot.to_dict() or {}
            execution = await self._execution(token.execution_id, data, answers=False)
            execution.callbacks = dict.fromkeys(data.get("answers") or {})
            verdict = callback_answer(execution, token, bool(data.get("cancel_requested")))
            if verdict == Answer.ACCEPTED:
                await self._write_parts(token.execution_id, parts)
                update = {FieldPath("answers", token.step).to_api_repr(): value}
                if data.get("status") == ExecutionStatus.WAITING:
                    update["wake_at"] = due_again()
                transaction.update(reference, update)
            return verdict, execution

        return await self._transact(answer_in)  # type: ignore[no-any-return]

    async def versions_in_use(self, name: str) -> dict[str, int]:
        statuses = sorted(status.value for status in UNDERWAY)
        found = (
            self._collection.where(filter=FieldFilter("flow", "==", name))
            .where(filter=FieldFilter("status", "in", statuses))
            .select(["flow_version"])
            .limit(VERSIONS_READ)
        )
        snapshots = await self._call(found.get())
        counted = Counter((s.to_dict() or {}).get("flow_version") or "unknown" for s in snapshots)
        return dict(counted)

    async def _transact(self, function: Any) -> Any:
        """Run a transactional function; Conflict passes through, contention is unavailable."""
        return await self._call(function(self._client.transaction()))

    def _document(self, execution: Execution) -> tuple[dict[str, Any], Parts]:
        return head(execution, self._ttl, self._inline_bytes)

    async def _write_parts(self, execution_id: str, parts: Parts) -> None:
        await self._write_parts_of(self._collection.document(execution_id), parts, self._ttl)

    async def _execution(
        self, execution_id: str, data: dict[str, Any], answers: bool = True
    ) -> Execution:
        """The execution a head stands for, its spilled slots read back from their parts
        (with the callbacks' answers unless `answers` is false)."""
        if "input" not in data and "document" in data:
            # Written before this layout (one map per execution): read until its TTL ends.
            return Execution.model_validate(data["document"])
        slots: dict[str, Any] = {"input": data["input"], "result": data.get("result", "null")}
        slots |= {f"step.{name}": value for name, value in data.get("steps", {}).items()}
        if answers:
            slots |= {f"answer.{name}": value for name, value in data.get("answers", {}).items()}
        slots = await self._read_slots(self._collection.document(execution_id), slots)
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
        execution.traceparent = data.get("traceparent")
        execution.callbacks = {
            name.removeprefix("answer."): from_json(text)
            for name, text in slots.items()
            if name.startswith("answer.")
        }
        return execution

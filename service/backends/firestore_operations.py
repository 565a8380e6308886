"""The executions' operators' side on Firestore: listings, cancels, re-drives, timers,
callbacks' answers and the versions in use; how a head document is read back.

Cancels and re-drives are transactions: rare, and each reads what it decides on. A
callback's answer is a read and a write conditioned on the update time it read (answers
come at once, from several reviewers: the emulator queued their transactions for
seconds). Running executions with a cancel asked are found by one query (`cancel_requests`),
not one read per execution. Waiting executions are found by one query on (status,
wake_at) and handed to one waker each by a write conditioned on the document's update
time (service/backends/firestore_wire.py), not a transaction. The run's own path
(claim, checkpoints, saves) is service/backends/firestore.py's.
"""

from __future__ import annotations

import asyncio
import builtins
from collections import Counter
from collections.abc import Mapping
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from service.backends.answers import (
    Answer,
    AnswerRule,
    callback_rule,
    child_answer,
    child_resumes,
)
from service.backends.firestore_calls import Contended
from service.backends.firestore_ends import PARENTS_KEPT, FirestoreEnds
from service.backends.firestore_layout import (
    SUMMARY_FIELDS,
    Parts,
    from_json,
    head,
    to_json,
)
from service.backends.firestore_wire import LOST_RACE, python, write
from service.backends.listing import ExecutionQuery, Page, page_key, page_token
from service.backends.store import (
    cancelled,
    due_again,
    kept_shadows,
    may_redrive,
)
from service.callback_tokens import CallbackToken
from service.errors import StoreUnavailable
from service.execution import (
    UNDERWAY,
    Execution,
    ExecutionStatus,
    ExecutionSummary,
    FlowVersion,
    ParentRef,
    ShadowResult,
    StepResult,
    now,
)
from service.retry import RetryPolicy

VERSIONS_READ = 1000  # executions read to count the versions in use
# Answers lost to another writer try again after a jittered pause (20 ms, doubling, at most
# 1 s): many reviewers answering at once spread out instead of racing in step.
ANSWER_RETRY = RetryPolicy(maximum_attempts=10, initial_interval=0.02, maximum_interval=1.0)


class FirestoreOperations(FirestoreEnds):
    """What operators, timers and callbacks do to executions (see the module's docstring)."""

    async def list(self, query: ExecutionQuery) -> Page:
        found = self._collection.select(SUMMARY_FIELDS)
        if query.statuses:
            values = sorted(status.value for status in query.statuses)
            found = found.where(filter=FieldFilter("status", "in", values))
        if query.flow is not None:
            found = found.where(filter=FieldFilter("flow", "==", query.flow))
        if query.parent is not None:
            found = found.where(filter=FieldFilter("parent.execution_id", "==", query.parent))
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
            shadows = kept_shadows(after, data.get("shadows") or {})  # and their parts
            transaction.set(reference, {**fields, "delivered": False, "shadows": shadows})
            return before, after

        return await self._transact(redrive_in)  # type: ignore[no-any-return]

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
            name = self._wire.path(self._collection.id, snapshot.id)
            moved = write(
                name,
                {"wake_at": due_again()},
                ["wake_at"],
                update_time=snapshot.update_time.timestamp_pb(),
            )
            try:
                await self._call(self._wire.write(moved, self._timeout_s))
            except StoreUnavailable as exc:
                if isinstance(exc.__cause__, LOST_RACE):
                    return None  # another waker took it
                raise
            return await self._execution(snapshot.id, snapshot.to_dict() or {})

        taken = await asyncio.gather(*(take(snapshot) for snapshot in snapshots))
        return [execution for execution in taken if execution is not None]

    async def answer(self, token: CallbackToken, body: Any) -> tuple[Answer, Execution | None]:
        return await self._answered(token.execution_id, token.step, body, callback_rule(token))

    async def child_ended(
        self, parent: ParentRef, child: str, end: Any
    ) -> tuple[Answer, Execution | None]:
        # The end is a document of its own (service/backends/firestore_ends.py): the head
        # is read, and written only by the end that resumes it.
        name = self._wire.path(self._collection.id, parent.execution_id)
        document = await self._call(self._wire.get(name, self._timeout_s))
        if document is None:
            return Answer.UNKNOWN, None
        execution, data = await self._parent_at(parent.execution_id, document)
        verdict = child_answer(execution, parent, child, bool(data.get("cancel_requested")))
        if verdict != Answer.ACCEPTED:
            return verdict, None
        wait = execution.steps[parent.step].wait
        assert wait is not None
        group = f"{wait.run}~{parent.step}"
        value, parts = self._slot(f"answer.{parent.answer_key}", to_json(end))
        await self._write_parts(parent.execution_id, parts)
        key = f"{wait.run}~{parent.answer_key}"
        if not await self._record_end(parent.execution_id, key, group, value):
            verdict = Answer.ANSWERED  # reported before: its resume is decided again
        ends = await self._count_ends(parent.execution_id, group)
        if not child_resumes(execution, parent, ends):
            return verdict, None
        if not await self._mark_resume(parent.execution_id, group, ends):
            return verdict, None  # another end that counted as many resumes it
        # Its timer moved (if the resume is lost), conditioned on the head as last read: a
        # parent that suspends meanwhile is read again and resumed; one still running
        # loses its own next write to this one, and its suspend reads the ends again.
        for attempt in range(1, ANSWER_RETRY.maximum_attempts + 1):
            moved = write(
                name, {"wake_at": due_again()}, ["wake_at"], update_time=document.update_time
            )
            try:
                await self._call(self._wire.write(moved, self._timeout_s))
            except StoreUnavailable as exc:
                if not isinstance(exc.__cause__, LOST_RACE):
                    raise
                await asyncio.sleep(ANSWER_RETRY.delay(attempt))
                document = await self._call(self._wire.get(name, self._timeout_s))
                if document is None:
                    return verdict, None
                execution, _ = await self._parent_at(parent.execution_id, document)
                continue
            return verdict, execution.model_copy()
        raise Contended(f"execution store: {parent.execution_id} kept changing under its ends")

    async def _parent_at(
        self, execution_id: str, document: Any
    ) -> tuple[Execution, dict[str, Any]]:
        """The parent a head read stands for (parsed once per version: its children's ends
        leave it as it is), and its fields."""
        stamp = document.update_time
        version = (execution_id, stamp.seconds, stamp.nanos)
        data = python(document.fields)
        execution = self._parents.get(version)
        if execution is None:
            execution = await self._execution(execution_id, data, answers=False)
            self._parents[version] = execution
            if len(self._parents) > PARENTS_KEPT:
                self._parents.popitem(last=False)
        return execution, data

    async def _answered(
        self, execution_id: str, key: str, body: Any, rule: AnswerRule
    ) -> tuple[Answer, Execution | None]:
        """Record `body` at `answers.KEY` if `rule` accepts; the execution, its answers'
        keys (this one included once accepted) without their bodies."""
        # A read and a write conditioned on it, like a claim: of answers at once, each
        # write either lands (and is answered so) or lost to another and decides again. A
        # transaction here queued behind the others and could land after its caller had
        # been told 503.
        name = self._wire.path(self._collection.id, execution_id)
        value, parts = self._slot(f"answer.{key}", to_json(body))
        for attempt in range(1, ANSWER_RETRY.maximum_attempts + 1):
            document = await self._call(self._wire.get(name, self._timeout_s))
            if document is None:
                return Answer.UNKNOWN, None
            data = python(document.fields)
            execution = await self._execution(execution_id, data, answers=False)
            execution.callbacks = dict.fromkeys(data.get("answers") or {})
            verdict = rule(execution, bool(data.get("cancel_requested")))
            if verdict != Answer.ACCEPTED:
                return verdict, execution
            await self._write_parts(execution_id, parts)
            fields: dict[str, Any] = {"answers": {key: value}}
            mask = [FieldPath("answers", key).to_api_repr()]
            if data.get("status") == ExecutionStatus.WAITING:
                fields["wake_at"] = due_again()
                mask.append("wake_at")
            answered = write(name, fields, mask, update_time=document.update_time)
            try:
                await self._call(self._wire.write(answered, self._timeout_s))
            except StoreUnavailable as exc:
                if isinstance(exc.__cause__, LOST_RACE):
                    # Another wrote first (an answer, the run): decide again.
                    await asyncio.sleep(ANSWER_RETRY.delay(attempt))
                    continue
                raise
            execution.callbacks[key] = None
            return verdict, execution
        raise Contended(f"execution store: {execution_id} kept changing under its answers")

    async def record_shadows(self, execution_id: str, shadows: Mapping[str, ShadowResult]) -> None:
        """One slot per step (`shadows.STEP`, its own outcome and its items' by key), so
        that a for_each's thousands stay out of the head: merged with what the slot held,
        in a write conditioned on the head read, as answers are."""
        steps: dict[str, dict[str, Any]] = {}
        for key, shadow in shadows.items():
            steps.setdefault(key.partition("#")[0], {})[key] = shadow.model_dump(mode="json")
        name = self._wire.path(self._collection.id, execution_id)
        for attempt in range(1, ANSWER_RETRY.maximum_attempts + 1):
            document = await self._call(self._wire.get(name, self._timeout_s))
            if document is None:
                return
            stored = python(document.fields).get("shadows") or {}
            earlier = await self._read_slots(
                self._collection.document(execution_id),
                {f"shadow.{step}": stored[step] for step in steps if step in stored},
            )
            values: dict[str, Any] = {}
            for step, outcomes in steps.items():
                text = earlier.get(f"shadow.{step}")
                merged = {**(from_json(text) if text else {}), **outcomes}
                values[step], parts = self._slot(f"shadow.{step}", to_json(merged))
                await self._write_parts(execution_id, parts)
            mask = [FieldPath("shadows", step).to_api_repr() for step in values]
            change = write(name, {"shadows": values}, mask, update_time=document.update_time)
            try:
                await self._call(self._wire.write(change, self._timeout_s))
                return
            except StoreUnavailable as exc:
                if isinstance(exc.__cause__, LOST_RACE):  # a run, an answer: merge again
                    await asyncio.sleep(ANSWER_RETRY.delay(attempt))
                    continue
                raise
        raise Contended(f"execution store: {execution_id} kept changing under its shadows")

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
        self, execution_id: str, data: dict[str, Any], answers: bool = True, shadows: bool = False
    ) -> Execution:
        """The execution a head stands for, its spilled slots read back from their parts
        (with the callbacks' answers unless `answers` is false, and with its shadows'
        outcomes on its steps if `shadows`: what readers see, not what a run saves)."""
        if "input" not in data and "document" in data:
            # Written before this layout (one map per execution): read until its TTL ends.
            return Execution.model_validate(data["document"])
        slots: dict[str, Any] = {"input": data["input"], "result": data.get("result", "null")}
        slots |= {f"step.{name}": value for name, value in data.get("steps", {}).items()}
        if answers:
            slots |= {f"answer.{name}": value for name, value in data.get("answers", {}).items()}
        if shadows:
            slots |= {f"shadow.{step}": value for step, value in data.get("shadows", {}).items()}
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
        outcomes = {
            key: ShadowResult.model_validate(shadow)
            for name, text in slots.items()
            if name.startswith("shadow.")
            for key, shadow in from_json(text).items()
        }
        return execution.shadowed(outcomes)

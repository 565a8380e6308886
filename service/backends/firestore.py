"""The execution store shared by every instance, on Firestore: an execution's own run.

Each execution is one head document, its larger slots in part documents
(service/backends/firestore_layout.py has the picture and the sizes). Its run's path
goes over the wire as raw protobuf (service/backends/firestore_wire.py), and without
transactions:

- A claim reads the head and writes its decision conditioned on the update time it
  read (created if there was none): of two claims, the second's write is refused and
  it reads again. It creates the head, or starts a `queued` one, or resumes a waiting
  one, or takes over one whose lease has expired, or reports it running or finished.
- The lease holder's writes after that (checkpoints, renewals, the saves, the suspend,
  the release) are conditioned on the update time of its own last write. Another's
  write in between (an operator's cancel, a callback's answer, a claim that took an
  expired lease over) makes it read the head, learn what changed, and decide again: a
  cancel asked wins over the run's verdict (`cancel_wins`), an answer makes a suspended
  execution due at once, a lease taken over is lost. Nothing is read when nobody else
  wrote. Children's ends are not written to the head (firestore_ends.py): a claim
  reads those its run waits for, and so does a suspend, which resumes at once if some
  came while it ran.

Step outcomes are written field by field (`steps.NAME`), several in one commit.
`expire_at` lets a Firestore TTL policy delete old executions and their parts
(infra/setup.sh). Every call answers within `timeout_s`, its errors as the store's
(service/backends/firestore_calls.py); a claim given up for contention means that
other deliveries are claiming it now.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud.firestore_v1.field_path import FieldPath
from google.protobuf.timestamp_pb2 import Timestamp

from service.backends.firestore_calls import Contended
from service.backends.firestore_layout import slot, summary
from service.backends.firestore_operations import FirestoreOperations
from service.backends.firestore_wire import LOST_RACE, deletion, later, python, write
from service.backends.store import Claim, ClaimState, cancel_wins, claimed, suspended
from service.errors import StoreUnavailable
from service.execution import Execution, ExecutionStatus, StepResult

CLAIM_ATTEMPTS = 10
HELD = 10_000  # executions whose last update time this instance remembers
LEASE_ENDED = {"owner": None, "lease_until": None}


@dataclass(slots=True)
class _Held:
    """What this instance knows of an execution it runs, as of `version`: the head's
    update time after its own last write (None: read it first)."""

    version: Timestamp | None = None
    cancel_requested: bool = False
    answered: frozenset[str] = frozenset()
    owner: str | None = None

    def learn(self, data: Mapping[str, Any]) -> None:
        self.cancel_requested = bool(data.get("cancel_requested"))
        self.answered = frozenset(data.get("answers") or {})
        self.owner = data.get("owner")


# What a holder's write is made of, given what is known: fields and their paths, or None.
Change = Callable[[_Held], tuple[dict[str, Any], list[str]] | None]


class FirestoreStore(FirestoreOperations):
    """Executions in a Firestore collection, leased by the instance that runs them."""

    # Steps that end within this of each other share a commit (parallel steps of a
    # flow, cache hits): a write costs ~0.4 ms of CPU and a round trip.
    write_window_s = 0.005

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: OrderedDict[str, _Held] = OrderedDict()

    async def enqueue(self, execution: Execution) -> bool:
        fields, parts = self._document(execution)
        await self._write_parts(execution.execution_id, parts)
        created = write(self._name(execution.execution_id), fields, exists=False)
        try:
            await self._call(self._wire.write(created, self._timeout_s))
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, LOST_RACE):
                return False  # a copy is stored: it stays as it is
            raise
        return True

    async def unqueue(self, execution_id: str) -> None:
        name = self._name(execution_id)
        document = await self._call(self._wire.get(name, self._timeout_s))
        if document is None or python(document.fields).get("status") != ExecutionStatus.QUEUED:
            return
        try:
            gone = deletion(name, document.update_time)
            await self._call(self._wire.write(gone, self._timeout_s))
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, LOST_RACE):
                raise  # else a claim came first: it is kept

    async def claim(self, execution: Execution, owner: str, lease_s: float) -> Claim:
        name = self._name(execution.execution_id)
        fresh, parts = self._document(execution)
        await self._write_parts(execution.execution_id, parts)
        for _ in range(CLAIM_ATTEMPTS):
            document = await self._call(self._wire.get(name, self._timeout_s))
            now = datetime.now(UTC)
            lease = {"owner": owner, "lease_until": now + timedelta(seconds=lease_s)}
            data = None if document is None else python(document.fields)
            fields: dict[str, Any] | None
            if data is None:
                state, fields = ClaimState.CLAIMED, fresh | lease
                change = write(name, fields, exists=False)
            else:
                state, fields = _claimed(data, execution, lease, now)
                if fields is None:
                    return await self._answer(state, data, execution)  # nothing to write
                change = write(name, fields, list(fields), update_time=document.update_time)
            try:
                version = await self._call(self._wire.write(change, self._timeout_s))
            except StoreUnavailable as exc:
                if isinstance(exc.__cause__, LOST_RACE):
                    continue  # another claim (or a cancel) wrote first: read again
                raise
            held = self._holding(execution.execution_id, reset=True)
            held.learn(data or {})
            held.version, held.owner = version, owner
            return await self._answer(state, data, execution)
        return Claim(ClaimState.RUNNING)  # other deliveries are claiming it now

    async def _answer(
        self, state: ClaimState, data: dict[str, Any] | None, execution: Execution
    ) -> Claim:
        """What a claim that decided `state` on the stored head `data` (None: it made the
        head from `execution`) answers."""
        if state == ClaimState.RUNNING:
            return Claim(state)
        if data is None:
            return Claim(ClaimState.CLAIMED, execution)
        stored = await self._execution(execution.execution_id, data)
        if state == ClaimState.FINISHED:
            return Claim(ClaimState.FINISHED, stored, delivered=True)
        stored.callbacks |= await self._ends(stored)
        return claimed(stored, bool(data.get("cancel_requested")), execution)

    async def renew(self, execution_id: str, owner: str, lease_s: float) -> bool:
        def renewed(held: _Held) -> tuple[dict[str, Any], list[str]] | None:
            if held.owner != owner:
                return None
            lease_until = datetime.now(UTC) + timedelta(seconds=lease_s)
            return {"lease_until": lease_until}, ["lease_until"]

        return await self._as_holder(execution_id, renewed)

    async def save_steps(self, execution_id: str, results: Mapping[str, StepResult]) -> None:
        values: dict[str, Any] = {}
        for name, result in results.items():
            values[name], parts = slot(f"step.{name}", result.model_dump_json(), self._inline_bytes)
            await self._write_parts(execution_id, parts)
        mask = [FieldPath("steps", name).to_api_repr() for name in values] + ["updated_at"]
        fields = {"steps": values, "updated_at": datetime.now(UTC)}
        await self._as_holder(execution_id, lambda held: (fields, mask))

    async def save(self, execution: Execution, delivered: bool = False) -> None:
        fields, parts = self._document(execution)
        fields["delivered"] = delivered
        if delivered:
            fields |= LEASE_ENDED
        await self._write_parts(execution.execution_id, parts)

        def saved(held: _Held) -> tuple[dict[str, Any], list[str]]:
            status = execution.status
            cancel_wins(execution, held.cancel_requested)
            if execution.status != status:
                fields.update(summary(execution, self._ttl))
            return fields, list(fields)

        await self._as_holder(execution.execution_id, saved, blind=True)
        if delivered:
            self._held.pop(execution.execution_id, None)

    async def suspend(self, execution: Execution) -> bool:
        fields, parts = self._document(execution)
        fields |= LEASE_ENDED | {"delivered": False}
        await self._write_parts(execution.execution_id, parts)
        ended: set[str] = set()
        resume = False

        async def learn() -> None:  # children that ended while it ran, read again with the head
            ended.update(await self._ends(execution))

        def suspending(held: _Held) -> tuple[dict[str, Any], list[str]]:
            nonlocal resume
            answered = held.answered | execution.callbacks.keys() | ended
            resume = suspended(execution, answered, held.cancel_requested)
            fields.update(summary(execution, self._ttl))  # its timer, and its expiry
            return fields, list(fields)

        await learn()
        await self._as_holder(execution.execution_id, suspending, blind=True, learn=learn)
        self._held.pop(execution.execution_id, None)
        return resume

    async def release(self, execution_id: str, owner: str) -> None:
        def released(held: _Held) -> tuple[dict[str, Any], list[str]] | None:
            return (LEASE_ENDED, list(LEASE_ENDED)) if held.owner == owner else None

        await self._as_holder(execution_id, released)
        self._held.pop(execution_id, None)

    async def get(self, execution_id: str) -> Execution | None:
        document = await self._call(self._wire.get(self._name(execution_id), self._timeout_s))
        if document is None:
            return None
        return await self._execution(execution_id, python(document.fields), shadows=True)

    async def _as_holder(
        self,
        execution_id: str,
        change: Change,
        blind: bool = False,
        learn: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Write what `change` makes of what is known, conditioned on the head being as
        this instance last wrote it; else read it (and `learn` what else it needs),
        and ask `change` again. False if `change` writes nothing, or there is no head
        (unless `blind`: then it is made)."""
        held = self._holding(execution_id)
        name = self._name(execution_id)
        for _ in range(CLAIM_ATTEMPTS):
            if held.version is None:
                document = await self._call(self._wire.get(name, self._timeout_s))
                if document is None and not blind:
                    return False
                if document is not None:
                    held.version = document.update_time
                    held.learn(python(document.fields))
                if learn is not None:
                    await learn()
            made = change(held)
            if made is None:
                return False
            fields, mask = made
            expected = held.version
            try:
                committed = write(name, fields, mask, update_time=expected)
                version = await self._call(self._wire.write(committed, self._timeout_s))
            except StoreUnavailable as exc:
                if isinstance(exc.__cause__, LOST_RACE):
                    held.version = None  # another wrote since: read what changed
                    continue
                raise
            held.version = later(held.version, version)
            return True
        raise Contended(f"execution store: {execution_id} kept changing under its holder")

    def _holding(self, execution_id: str, reset: bool = False) -> _Held:
        held = None if reset else self._held.get(execution_id)
        if held is None:
            held = self._held[execution_id] = _Held()
            if len(self._held) > HELD:
                self._held.popitem(last=False)
        return held

    def _name(self, execution_id: str) -> str:
        return self._wire.path(self._collection.id, execution_id)


def _claimed(
    data: dict[str, Any], execution: Execution, lease: dict[str, Any], now: datetime
) -> tuple[ClaimState, dict[str, Any] | None]:
    """What a claim of the stored head `data` decides, and the fields it writes (None:
    nothing)."""
    pinned = {
        "flow_version": data.get("flow_version") or execution.flow_version,
        "traceparent": data.get("traceparent") or execution.traceparent,
    }
    if data.get("status") == ExecutionStatus.QUEUED:
        started = {"status": ExecutionStatus.RUNNING.value, "started_at": now}
        return ClaimState.CLAIMED, {**lease, **started, **pinned}
    if data.get("delivered"):
        return ClaimState.FINISHED, None
    lease_until = data.get("lease_until")
    if lease_until is not None and lease_until > now:
        return ClaimState.RUNNING, None
    if data.get("status") == ExecutionStatus.WAITING:
        resumed = {"status": ExecutionStatus.RUNNING.value, "wake_at": None}
        return ClaimState.CLAIMED, {**lease, **resumed}
    return ClaimState.CLAIMED, lease

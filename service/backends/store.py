"""Where executions are recorded, so that a redelivered message never runs twice.

`claim` is the one decision point for a delivery: run it (perhaps resuming
from stored step outcomes), ignore it (finished), or send it back (running
elsewhere under a live lease). A lease is short and renewed while the
execution runs, so a crashed instance's execution is claimed again by the
next delivery within about one lease. Step outcomes are stored as they
complete (`save_steps`, several in one write), so a resumed execution does not
call them again.

The front door records each accepted execution as `queued` (`enqueue`) while it
publishes its message, never overwriting a copy that already started, and takes the
record back (`unqueue`) if the publish fails; the first claim replaces it.
`list` answers summaries newest first (by `requested_at`, then id) a page at a
time; a page token is the last key of its page, so inserts never shift pages.

Operators: `cancel` ends a queued execution at once (its result is delivered when
its message arrives) or flags a running one, which the instance running it finds
through `cancel_requests` (one query, whatever the number in flight); a flag that
arrives while the run ends wins when its outcome is saved (`cancel_wins`), so a
cancel answered `cancelling` always ends `cancelled`; `redrive` queues the next run
of an ended execution, keeping what succeeded.

Waiting executions: `suspend` stores a run that ended `waiting` and ends its lease;
its `wake_at` is its timer. `due` hands out the waiting executions whose timer has
passed, each to one caller only (its timer moves REWAKE_S ahead, in case the resume
it sends is lost); a claim resumes a waiting execution like a queued one. `answer`
records what was posted to a step's callback URL (`callback_answer` decides, in
service/backends/answers.py, as `child_answer` does for `child_ended`); a cancel flags
a waiting execution. Either moves its timer to `due_again()` while the
caller sends its resume at once (the resume ends a cancelled one `cancelled` and
delivers it); a run that suspends with an answer or a cancel already stored does the
same: its timer moves to `due_again()` and the suspending worker sends the resume.

A step's shadow calls (service/engine/shadows.py) end after its run has: `record_shadows`
keeps their outcomes apart from the steps, and `get` shows each on its step or item.

The step cache (`cached`, `cache`) and the limits' shares (`lease_share`,
service/shares.py) are kept here too, so that every instance shares them.

Flow versions: `keep_flow` stores a version's definition once, `flow_source` reads
it back for an execution pinned to it, `versions_in_use` counts the executions not
ended per version of a flow.

The protocol is split by role, each package seeing only what it uses: `RunStore` (the
worker's runs), `WaitStore` (wakes, answers, cancels), `VersionStore` (pinned flow
versions), `OperatorStore` (the HTTP edge), all reading `Documents`; the engine declares
its own (an answer store, share leases). `ExecutionStore` is all of them.
`MemoryStore` (service/backends/memory.py) serves one instance; `FirestoreStore`
(service/backends/firestore.py) shares executions across instances.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import structlog

from service.backends.answers import Answer
from service.backends.listing import ExecutionQuery, Page
from service.callback_tokens import CallbackToken
from service.execution import (
    CANCELLABLE,
    CANCELLED_BY_OPERATOR,
    REDRIVABLE,
    TERMINAL,
    CachedOutput,
    Execution,
    ExecutionStatus,
    FlowVersion,
    ParentRef,
    ShadowResult,
    StepResult,
    now,
)
from service.shares import Ask, Share

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Cancels that the run itself carries out: running here or elsewhere, or waiting to resume.
FLAGGED = frozenset({ExecutionStatus.RUNNING, ExecutionStatus.WAITING})
# A woken execution whose resume message is lost is due again after this.
REWAKE_S = 120.0
# What a run that was not cancelled ends as.
RUN_VERDICTS = frozenset(
    {ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.PARTIAL}
)


class ClaimState(StrEnum):
    CLAIMED = "claimed"  # this delivery holds the lease and runs the execution
    RUNNING = "running"  # another delivery holds a live lease on it
    FINISHED = "finished"  # it ended: delivered, or (this delivery holds the lease) to deliver


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    execution: Execution | None = None  # what to run (with stored steps) or what finished
    delivered: bool = False
    cancel_requested: bool = False


def claimed(
    execution: Execution, cancel_requested: bool = False, fresh: Execution | None = None
) -> Claim:
    """The lease is taken: to run the execution, or only to deliver its ended result.

    A queued execution (new, or re-driven with its succeeded steps) starts now, pinned
    to the flow version of the delivery's `fresh` copy unless it has one, and in its
    trace; a waiting one resumes.
    """
    if execution.status in TERMINAL:
        return Claim(ClaimState.FINISHED, execution, delivered=False)
    if execution.status == ExecutionStatus.QUEUED:
        execution.status, execution.started_at = ExecutionStatus.RUNNING, now()
    elif execution.status == ExecutionStatus.WAITING:
        execution.status, execution.wake_at = ExecutionStatus.RUNNING, None
    if fresh is not None:
        execution.flow_version = execution.flow_version or fresh.flow_version
        execution.traceparent = execution.traceparent or fresh.traceparent
    return Claim(ClaimState.CLAIMED, execution, cancel_requested=cancel_requested)


class Conflict(Exception):
    """The execution's status does not allow what was asked."""

    def __init__(self, status: ExecutionStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def cancelled(execution: Execution) -> ExecutionStatus:
    """Cancel `execution` in place if it is queued; the status it had.

    Conflict unless it is queued, running or waiting (those are flagged by the store).
    """
    status = execution.status
    if status not in CANCELLABLE:
        raise Conflict(status, f"the execution has ended ({status.value})")
    if status == ExecutionStatus.QUEUED:
        execution.finish(ExecutionStatus.CANCELLED, CANCELLED_BY_OPERATOR)
    return status


def cancel_wins(execution: Execution, cancel_requested: bool) -> None:
    """A cancel asked before the ended run is saved wins over its verdict (in place).

    The operator was answered `cancelling`; the steps' outcomes are kept as they are.
    """
    if cancel_requested and execution.status in RUN_VERDICTS:
        log.info("cancel asked as the run ended; it ends cancelled", was=execution.status)
        execution.status, execution.error = ExecutionStatus.CANCELLED, CANCELLED_BY_OPERATOR


def due_again() -> datetime:
    """A woken execution's timer: if its resume is lost, it is due again then."""
    return now() + timedelta(seconds=REWAKE_S)


def suspended(execution: Execution, answered: Collection[str], cancel_requested: bool) -> bool:
    """`Execution.suspend` as stored: one that must resume now (answered or cancelled
    while it ran) is handed to the caller, its timer `due_again()`; whether it is."""
    resume = execution.suspend(answered, cancel_requested)
    if resume:
        execution.wake_at = due_again()
    return resume


def kept_shadows(after: Execution, shadows: Mapping[str, T]) -> dict[str, T]:
    """Of an execution's shadow outcomes (by step, or `step#index`), those of the steps its
    re-drive `after` keeps (a for_each's items that run again are shadowed again)."""
    return {key: shadow for key, shadow in shadows.items() if key.partition("#")[0] in after.steps}


def may_redrive(execution: Execution, delivered: bool) -> None:
    """Conflict unless `execution` ended failed, partial or cancelled and went out.

    What the next run keeps is the model's rule: `Execution.redriven`.
    """
    if execution.status not in REDRIVABLE:
        raise Conflict(execution.status, f"a {execution.status.value} execution is not re-driven")
    if not delivered:
        raise Conflict(execution.status, "its result is still being delivered")


class Documents(Protocol):
    """An execution by id, read or stored whole: what every role below reads."""

    async def get(self, execution_id: str) -> Execution | None: ...

    async def save(self, execution: Execution, delivered: bool = False) -> None:
        """Store the whole document; once its result is delivered, the lease ends.

        An ended run gives way to a cancel asked while it ran (`cancel_wins`); a cancel is
        never asked of an execution once it is stored ended.
        """


class RunStore(Documents, Protocol):
    """What a run needs: its claim and lease, its outcomes, its end or suspend (the worker's
    push handler, checkpoints, leases and cancel watch)."""

    # How long a step's outcome waits for others to share its write (service/worker/checkpoints.py).
    write_window_s: float

    async def claim(self, execution: Execution, owner: str, lease_s: float) -> Claim:
        """Take the lease on `execution` unless another holds it or its result was delivered."""

    async def renew(self, execution_id: str, owner: str, lease_s: float) -> bool:
        """Extend `owner`'s lease; False if the lease was lost to another owner."""

    async def save_steps(self, execution_id: str, results: Mapping[str, StepResult]) -> None:
        """Store these steps' outcomes, in one write."""

    async def release(self, execution_id: str, owner: str) -> None:
        """End `owner`'s lease early, keeping stored steps, so a redelivery resumes at once."""

    async def suspend(self, execution: Execution) -> bool:
        """Store a run that ended `waiting` (`Execution.suspend` with what is stored:
        callbacks answered, a cancel asked) and end its lease. True if an answer or a
        cancel came while it ran: its timer is `due_again()`, the caller sends its resume."""

    async def cancel_requests(self) -> set[str]:
        """Ids of running executions whose cancellation was asked."""

    async def record_shadows(self, execution_id: str, shadows: Mapping[str, ShadowResult]) -> None:
        """Keep shadow calls' outcomes (by step, or `step#index`) beside the execution's
        steps, over those of before; no save of a run overwrites them, `get` shows them."""


class WaitStore(Documents, Protocol):
    """What goes on with waiting and ended executions: due timers, callbacks' answers,
    children's ends, cancels, re-drives (worker/wakes.py, worker/children.py)."""

    async def due(self, limit: int) -> builtins.list[Execution]:
        """Up to `limit` waiting executions whose wake_at has passed, each given to this
        caller only: its wake_at moves to `due_again()`."""

    async def answer(self, token: CallbackToken, body: Any) -> tuple[Answer, Execution | None]:
        """Record `body` as the answer to the token's step if `callback_answer` accepts;
        with the execution. A waiting one's timer moves to `due_again()`: the caller
        sends its resume now (a running one is due when it suspends)."""

    async def child_ended(
        self, parent: ParentRef, child: str, end: Any
    ) -> tuple[Answer, Execution | None]:
        """Record `end` as the end of `child` at its parent's step or item if
        `child_answer` accepts; with the parent if this end is the one to resume it
        (`child_resumes`), once however many report at once (its timer then moved to
        `due_again()`, as `answer` does), else None. Reported again (a redelivery), the
        end is kept as it was and resumes nobody a second time."""

    async def cancel(self, execution_id: str) -> ExecutionStatus | None:
        """Cancel it (see `cancelled`); the status it had, None if unknown; or Conflict.

        A waiting one is flagged and its timer moved to `due_again()`: the caller sends
        its resume, which ends it `cancelled` and delivers it."""

    async def redrive(
        self, execution_id: str, moved_to: FlowVersion | None = None
    ) -> tuple[Execution, Execution] | None:
        """Store the next run (`may_redrive`, then `Execution.redriven`) as queued:
        (before, after); None if unknown. `moved_to`: see `Execution.redriven`."""


class VersionStore(Protocol):
    """The flow versions executions are pinned to (worker/versions.py)."""

    async def keep_flow(self, name: str, version: str, source: str) -> None:
        """Store a flow version's definition, unless it is stored."""

    async def flow_source(self, name: str, version: str) -> str | None: ...


class OperatorStore(Documents, VersionStore, Protocol):
    """What the HTTP edge reads and changes: the queued record, listings, the versions in
    use and kept (the front door and the operators' routes, a replay of another version;
    their cancels and re-drives go through worker/wakes.py)."""

    async def enqueue(self, execution: Execution) -> bool:
        """Record an accepted execution as queued, unless a copy of it is already stored;
        whether it was recorded."""

    async def unqueue(self, execution_id: str) -> None:
        """Take back the queued record `enqueue` made (its message was not published),
        unless a delivery has claimed the execution meanwhile."""

    async def versions_in_use(self, name: str) -> dict[str, int]:
        """How many executions of flow `name` not ended run each version (at most 1000 read)."""

    async def list(self, query: ExecutionQuery) -> Page:
        """Summaries matching `query`, newest first; PageTokenInvalid for a bad token."""


class ExecutionStore(RunStore, WaitStore, OperatorStore, Protocol):
    """Execution documents by id, with leases so one delivery runs each execution: every
    role above, the engine's too (an AnswerStore and ShareLeases: service/engine/caching.py
    and quotas.py declare them), as MemoryStore and FirestoreStore implement it."""

    async def lease_share(self, key: str, instance: str, ask: Ask, lease_s: float) -> Share:
        """`instance`'s share of limit `key` for the next `lease_s` (service/shares.py's
        `allot`, against the other live holders), recorded as `ask.kept` of it; a zero
        share with nothing asked or held lets go."""

    async def cached(self, key: str) -> CachedOutput | None:
        """The output kept under `key` (a digest), unless there is none or it expired."""

    async def cache(self, key: str, entry: CachedOutput) -> None:
        """Keep `entry` under `key` until its `expires_at`."""

    async def close(self) -> None: ...

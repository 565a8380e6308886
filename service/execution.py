"""The execution model: an execution, its steps and statuses, and the rules that change them.

Statuses are a `str` Enum with `TERMINAL` (ended) and the sets operators act on;
`Execution` is the document every reader sees (webhook body, result topic, status
endpoint, store). Ids and times that clients give are checked here, once.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

# Also keeps every id a valid Firestore document id: no "/", never "." or "..", no "__x__".
EXECUTION_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_EXECUTION_ID = re.compile(EXECUTION_ID)
# A step's name: a key of `steps` and a Firestore field path segment, never quoted.
STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,62}")
MAX_ERROR_CHARS = 2000
FLOW_VERSION = r"^[0-9a-f]{16}$"  # a hash of a flow's definition (service/engine/flow.py)


def is_execution_id(value: str) -> bool:
    """Whether `value` can name an execution (a message's, a path's, a page token's)."""
    return _EXECUTION_ID.fullmatch(value) is not None  # match's "$" lets a "\n" end it


def is_step_name(value: str) -> bool:
    """Whether `value` can name a step of a flow."""
    return STEP_NAME.fullmatch(value) is not None


def in_utc(moment: datetime) -> datetime:
    """`moment` in UTC; ValueError where that leaves the years 1-9999 (year 1 at +14:00)."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("must fall within the years 1 to 9999 in UTC") from None


# A time a client gives: with its offset, and one every store can hold.
Moment = Annotated[AwareDatetime, AfterValidator(in_utc)]


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class FlowVersion:
    """A version of a flow, as a re-drive that moves an execution to it needs it."""

    version: str
    steps: frozenset[str]


class ExecutionStatus(StrEnum):
    QUEUED = "queued"  # accepted (or re-driven), not started yet
    RUNNING = "running"
    WAITING = "waiting"  # suspended: a step waits; no instance holds it (wake_at says till when)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


TERMINAL = frozenset(
    {
        ExecutionStatus.SUCCEEDED,
        ExecutionStatus.FAILED,
        ExecutionStatus.PARTIAL,
        ExecutionStatus.CANCELLED,
        ExecutionStatus.REJECTED,
    }
)
# What an operator may run again: its succeeded steps (and for_each items) are kept.
REDRIVABLE = frozenset({ExecutionStatus.FAILED, ExecutionStatus.PARTIAL, ExecutionStatus.CANCELLED})
CANCELLABLE = frozenset({ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.WAITING})
# Not ended: what a flow version is still in use by.
UNDERWAY = frozenset({ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.WAITING})
CANCELLED_BY_OPERATOR = "cancelled by an operator"


class StepStatus(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class ShadowResult(BaseModel):
    """What a step's (or item's) shadow call answered, beside the answer that was used:
    `agree` is its `compare:` (else equal JSON), None when there was nothing to compare."""

    status: StepStatus
    duration_ms: int = 0
    agree: bool | None = None
    output: Any = None
    error: str | None = None
    # JSON pointers where its answer differs from the primary's (at most MAX_POINTERS).
    differences: list[str] = Field(default_factory=list)


class ItemResult(BaseModel):
    """One item of a `for_each` step (its output is the step's output at the same index)."""

    status: StepStatus
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    cached: bool = False  # its output came from the step's cache, not from a call
    cached_from: str | None = None  # the execution whose call made it
    child: str | None = None  # a flow step's: the child execution that runs this item
    variant: str | None = None  # a step with variants: the one called ("primary": `call:`)
    shadow: ShadowResult | None = None  # a step with a shadow: what it answered


@dataclass(frozen=True, slots=True)
class CachedOutput:
    """A step's answer kept for `cache: {key, ttl}`, and the execution whose call made it."""

    output: Any
    made_by: str
    expires_at: datetime


class Wait(BaseModel):
    """What a waiting step waits for, and until when it may."""

    kind: Literal["poll", "callback", "sleep", "flow"]
    timeout_at: datetime  # a poll or callback not done by then fails the step
    every_s: float | None = None  # a poll's next interval
    callback_sha256: str | None = None  # of the callback token's secret part
    run: int = 1  # the run whose callback token this is, or that waits for the children
    children: int = 0  # a flow step's: the children it started while it waits


class StepResult(BaseModel):
    """One step's outcome in the execution document."""

    status: StepStatus
    attempts: int = 0
    duration_ms: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: Any = None
    error: str | None = None
    items: list[ItemResult] | None = None  # for_each steps only
    wake_at: datetime | None = None  # a waiting step's next look (a poll, the sleep's end)
    wait: Wait | None = None
    cached: bool = False  # its output came from the step's cache, not from a call
    cached_from: str | None = None  # the execution whose call made it
    child: str | None = None  # a flow step's (without for_each): its child execution
    variant: str | None = None  # a step with variants (without for_each): the one called
    shadow: ShadowResult | None = None  # a step with a shadow (without for_each)


# Where a child execution's end is reported, and how deep it runs: `chain` holds the
# ids of its ancestors, the root first (its parent last).
MAX_CHILD_DEPTH = 5


class ParentRef(BaseModel):
    """A child execution's parent: the step (and item) it runs for, in any of its runs."""

    execution_id: str = Field(pattern=EXECUTION_ID)
    step: str = Field(pattern=f"^{STEP_NAME.pattern}$")
    index: int | None = Field(None, ge=0, description="its item, for a for_each step")
    chain: list[str] = Field(default_factory=list, max_length=MAX_CHILD_DEPTH)

    @property
    def answer_key(self) -> str:
        """Where the parent keeps this child's end: its step, and `#index` for an item."""
        return self.step if self.index is None else f"{self.step}#{self.index}"


class ExecutionSummary(BaseModel):
    """An execution without its input and steps: what listings show."""

    execution_id: str
    flow: str
    status: ExecutionStatus
    run: int = Field(1, ge=1, description="1, then 2, ... for each re-drive")
    requested_at: datetime = Field(default_factory=now)
    started_at: datetime | None = Field(default_factory=now)
    finished_at: datetime | None = None
    duration_ms: int | None = None
    error: str | None = None
    wake_at: datetime | None = Field(None, description="a waiting execution's next look")
    flow_version: str | None = Field(None, description="the version of its flow it runs")
    parent: ParentRef | None = Field(None, description="a child execution's parent")
    replay_of: str | None = Field(None, description="a replay's: the execution it replays")
    trigger: str | None = Field(None, description="the trigger of its flow that started it")


class Execution(ExecutionSummary):
    """The execution document: webhook body, result-topic data, status endpoint."""

    input: dict[str, Any]
    steps: dict[str, StepResult] = Field(default_factory=dict)
    result: Any = Field(None, description="what the flow's `result:` made of it, if it has one")
    # Kept for re-drives, never shown: a webhook URL may carry a receiver's token.
    webhook_url: str | None = Field(None, exclude=True)
    # What was POSTed to each waiting step's callback URL, read when the execution resumes.
    callbacks: dict[str, Any] = Field(default_factory=dict, exclude=True)
    # The producer's trace context (W3C traceparent), which a resumed run continues.
    traceparent: str | None = Field(None, exclude=True)

    @property
    def webhook_id(self) -> str:
        """Standard Webhooks' message id: the same across one run's retries, new per run."""
        return self.execution_id if self.run == 1 else f"{self.execution_id}~run{self.run}"

    def redriven(self, moved_to: FlowVersion | None = None) -> Execution:
        """The next run: queued, keeping succeeded steps and a for_each's succeeded items.

        Anything else runs again: failed, cancelled and never-run steps, and the
        steps skipped because of them (skips by `when` are decided again). `moved_to`
        pins it to another version of its flow, keeping only the steps that has.
        """
        steps = {}
        for name, result in self.steps.items():
            if moved_to is not None and name not in moved_to.steps:
                continue
            if result.status == StepStatus.SUCCEEDED:
                steps[name] = result
            elif result.items and any(i.status == StepStatus.SUCCEEDED for i in result.items):
                steps[name] = result.model_copy(update={"status": StepStatus.RUNNING})
        return self.model_copy(
            update={
                "status": ExecutionStatus.QUEUED,
                "run": self.run + 1,
                "steps": steps,
                "started_at": None,
                "finished_at": None,
                "duration_ms": None,
                "error": None,
                "result": None,
                "wake_at": None,
                "callbacks": {},
                "flow_version": moved_to.version if moved_to else self.flow_version,
            }
        )

    def suspend(self, answered: Collection[str] = (), cancel_requested: bool = False) -> bool:
        """Waiting steps, none running: the execution waits until the first one's wake_at.
        True if it must resume now instead: a callback it waits for was `answered`, or a
        cancel was asked, while it ran (the caller sends the resume and sets the timer)."""
        waiting = {n: r for n, r in self.steps.items() if r.status == StepStatus.WAITING}
        self.status = ExecutionStatus.WAITING
        moments = [r.wake_at for r in waiting.values() if r.wake_at is not None]
        self.wake_at = min(moments) if moments else now()
        return cancel_requested or any(self._takes(key, waiting) for key in answered)

    @staticmethod
    def _takes(key: str, waiting: dict[str, StepResult]) -> bool:
        """Whether an answer at `key` is one a waiting step has not taken in yet: a
        callback's (its step's name), or a child's (`step#index`: its item still runs)."""
        name, _, index = key.partition("#")
        result = waiting.get(name)
        if result is None or not index:
            return result is not None
        items = result.items or []
        return int(index) < len(items) and items[int(index)].status == StepStatus.RUNNING

    def finish(self, status: ExecutionStatus, error: str | None = None) -> None:
        self.status, self.wake_at = status, None
        # Bounded: an error is stored, logged and shown in every listing.
        self.error = error if error is None else error[:MAX_ERROR_CHARS]
        self.finished_at = now()
        if self.started_at is not None:
            self.duration_ms = round((self.finished_at - self.started_at).total_seconds() * 1000)

    def end_running(self, error: str, status: StepStatus = StepStatus.FAILED) -> None:
        """End the steps (and for_each items) still running or waiting with `status` and `error`."""
        ended = now()
        for result in self.steps.values():
            if result.status not in (StepStatus.RUNNING, StepStatus.WAITING):
                continue
            result.status, result.error, result.finished_at = status, error, ended
            result.wake_at = None
            for item in result.items or ():
                if item.status == StepStatus.RUNNING:
                    item.status, item.error = status, error

    def shadowed(self, shadows: dict[str, ShadowResult]) -> Execution:
        """Itself, with `shadows` (by step, or `step#index` for an item; stored apart from
        its steps, so that no run overwrites them) on the steps and items they belong to."""
        for key, shadow in shadows.items():
            name, _, index = key.partition("#")
            result = self.steps.get(name)
            if result is None:
                continue
            if not index:
                result.shadow = shadow
            elif result.items is not None and int(index) < len(result.items):
                result.items[int(index)].shadow = shadow
        return self

    def summary(self) -> ExecutionSummary:
        return ExecutionSummary.model_validate(
            {name: getattr(self, name) for name in ExecutionSummary.model_fields}
        )


class ExecutionResult(ExecutionSummary):
    """What a flow with `result:` delivers: the summary and the result, not input and steps."""

    result: Any = None
    status_url: str = Field(description="where the whole execution document is read")

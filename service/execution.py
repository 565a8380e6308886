"""The execution model: an execution, its steps and statuses, and the rules that change them.

Statuses are a `str` Enum with `TERMINAL` (ended) and the sets operators act on;
`Execution` is the document every reader sees (webhook body, result topic, status
endpoint, store). Ids and times that clients give are checked here, once.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

# Also keeps every id a valid Firestore document id: no "/", never "." or "..", no "__x__".
EXECUTION_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_EXECUTION_ID = re.compile(EXECUTION_ID)
MAX_ERROR_CHARS = 2000


def is_execution_id(value: str) -> bool:
    """Whether `value` can name an execution (a message's, a path's, a page token's)."""
    return _EXECUTION_ID.match(value) is not None


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


class ExecutionStatus(StrEnum):
    QUEUED = "queued"  # accepted (or re-driven), not started yet
    RUNNING = "running"
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
CANCELLABLE = frozenset({ExecutionStatus.QUEUED, ExecutionStatus.RUNNING})
CANCELLED_BY_OPERATOR = "cancelled by an operator"


class StepStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class ItemResult(BaseModel):
    """One item of a `for_each` step (its output is the step's output at the same index)."""

    status: StepStatus
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


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


class Execution(ExecutionSummary):
    """The execution document: webhook body, result-topic data, status endpoint."""

    input: dict[str, Any]
    steps: dict[str, StepResult] = Field(default_factory=dict)
    result: Any = Field(None, description="what the flow's `result:` made of it, if it has one")
    # Kept for re-drives, never shown: a webhook URL may carry a receiver's token.
    webhook_url: str | None = Field(None, exclude=True)

    @property
    def webhook_id(self) -> str:
        """Standard Webhooks' message id: the same across one run's retries, new per run."""
        return self.execution_id if self.run == 1 else f"{self.execution_id}~run{self.run}"

    def redriven(self) -> Execution:
        """The next run: queued, keeping succeeded steps and a for_each's succeeded items.

        Anything else runs again: failed, cancelled and never-run steps, and the
        steps skipped because of them (skips by `when` are decided again).
        """
        steps = {}
        for name, result in self.steps.items():
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
            }
        )

    def finish(self, status: ExecutionStatus, error: str | None = None) -> None:
        self.status = status
        # Bounded: an error is stored, logged and shown in every listing.
        self.error = error if error is None else error[:MAX_ERROR_CHARS]
        self.finished_at = now()
        if self.started_at is not None:
            self.duration_ms = round((self.finished_at - self.started_at).total_seconds() * 1000)

    def end_running(self, error: str, status: StepStatus = StepStatus.FAILED) -> None:
        """End the steps (and for_each items) still running with `status` and `error`."""
        ended = now()
        for result in self.steps.values():
            if result.status != StepStatus.RUNNING:
                continue
            result.status, result.error, result.finished_at = status, error, ended
            for item in result.items or ():
                if item.status == StepStatus.RUNNING:
                    item.status, item.error = status, error

    def summary(self) -> ExecutionSummary:
        return ExecutionSummary.model_validate(
            {name: getattr(self, name) for name in ExecutionSummary.model_fields}
        )


class ExecutionResult(ExecutionSummary):
    """What a flow with `result:` delivers: the summary and the result, not input and steps."""

    result: Any = None
    status_url: str = Field(description="where the whole execution document is read")

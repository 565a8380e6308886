"""What crosses the wire: the request message, the push envelope, the execution document."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

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


# The original guide's test payload (its test_payload.json): the API's example.
SEED_PAYLOAD: dict[str, Any] = {
    "user_id": "test_user_123",
    "session_id": "test_session_456",
    "create_user_embedding": False,
    "process_profession_orchestrator": True,
    "process_vacancy_orchestrator": True,
}


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


class RequestMessage(BaseModel):
    """Data of the orchestration topic; any producer may publish it directly.

    Only `flow` and `input` are required: `execution_id` defaults to the Pub/Sub
    message id (the same on every redelivery), `requested_at` to its publish time.
    """

    model_config = ConfigDict(extra="forbid")

    execution_id: str | None = Field(
        None, pattern=EXECUTION_ID, description="default: the Pub/Sub message id"
    )
    flow: str = Field(min_length=1, max_length=63)
    input: dict[str, Any]
    webhook_url: str | None = Field(None, max_length=2048)
    requested_at: Moment | None = Field(None, description="default: the publish time")

    def resolve(self, message_id: str | None, publish_time: str | None) -> ExecutionRequest:
        """The request with its defaults: the message's id and publish time."""
        execution_id = self.execution_id or message_id
        if execution_id is None:
            raise ValueError("execution_id: required when the message has no messageId")
        return ExecutionRequest(
            execution_id=execution_id,
            flow=self.flow,
            input=self.input,
            webhook_url=self.webhook_url,
            requested_at=self.requested_at or _timestamp(publish_time),
        )


@dataclass(frozen=True, slots=True)
class ExecutionRequest:
    """A request message with its defaults filled in: what the push handler runs."""

    execution_id: str
    flow: str
    input: dict[str, Any]
    webhook_url: str | None
    requested_at: datetime

    def execution(
        self, status: ExecutionStatus, flow_input: dict[str, Any] | None = None
    ) -> Execution:
        """The execution it asks for, `queued` (not started) or `running` (from now)."""
        return Execution(
            execution_id=self.execution_id,
            flow=self.flow,
            status=status,
            input=self.input if flow_input is None else flow_input,
            requested_at=self.requested_at,
            started_at=None if status == ExecutionStatus.QUEUED else now(),
            webhook_url=self.webhook_url,
        )


def _timestamp(text: str | None) -> datetime:
    """A message's publish time; now, when it is missing or not a usable time."""
    try:
        moment = datetime.fromisoformat(text) if text else now()
        return in_utc(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    except ValueError:
        return now()


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

    def request(self) -> RequestMessage:
        """The request message that runs this execution (again)."""
        return RequestMessage(
            execution_id=self.execution_id,
            flow=self.flow,
            input=self.input,
            webhook_url=self.webhook_url,
            requested_at=self.requested_at,
        )

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


class PushMessage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    data: str = Field(
        "",
        description="base64 of the request message: JSON with `flow` and `input` required",
        json_schema_extra={
            "contentEncoding": "base64",
            "contentMediaType": "application/json",
            "contentSchema": RequestMessage.model_json_schema(),
        },
    )
    attributes: dict[str, str] | None = None
    message_id: str | None = Field(None, alias="messageId")
    publish_time: str | None = Field(None, alias="publishTime")


class PushEnvelope(BaseModel):
    """The body Pub/Sub POSTs to a push endpoint."""

    model_config = ConfigDict(populate_by_name=True)

    message: PushMessage
    subscription: str | None = None
    delivery_attempt: int | None = Field(None, alias="deliveryAttempt")


class Accepted(BaseModel):
    """The front door's answer to an accepted request."""

    execution_id: str
    flow: str
    status: Literal["accepted"] = "accepted"
    status_url: str


class OrchestrateRequest(BaseModel):
    """The body of POST /orchestrate, for the documentation.

    Every field other than `flow` and `webhook_url` is the flow's input, validated
    against the input schema of the flow it names (the default flow takes the
    original system's payload, shown in the example).
    """

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [SEED_PAYLOAD]},
    )

    flow: str | None = Field(None, max_length=63, description="flow to run; DEFAULT_FLOW if absent")
    webhook_url: str | None = Field(
        None, max_length=2048, description="where the signed result is POSTed"
    )


def field_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """pydantic's errors as `{"field", "reason"}` pairs, fields in dotted form."""
    errors = []
    for error in exc.errors():
        parts = [prefix] if prefix else []
        path = ".".join([*parts, *(str(part) for part in error["loc"])])
        errors.append({"field": path or "(body)", "reason": error["msg"]})
    return errors


def describe(errors: list[dict[str, str]]) -> str:
    return "; ".join(f"{error['field']}: {error['reason']}" for error in errors)


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined, to embed in an OpenAPI operation."""
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return resolve(definitions[reference.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved

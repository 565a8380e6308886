"""What crosses the wire: the request message, the push envelope, the execution document."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

EXECUTION_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


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
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"
    REJECTED = "rejected"


TERMINAL = frozenset(
    {
        ExecutionStatus.SUCCEEDED,
        ExecutionStatus.FAILED,
        ExecutionStatus.PARTIAL,
        ExecutionStatus.REJECTED,
    }
)


class StepStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class RequestMessage(BaseModel):
    """Data of the orchestration topic; any producer may publish it directly."""

    model_config = ConfigDict(extra="forbid")

    execution_id: str = Field(pattern=EXECUTION_ID)
    flow: str = Field(min_length=1, max_length=63)
    input: dict[str, Any]
    webhook_url: str | None = Field(None, max_length=2048)
    requested_at: datetime


class StepResult(BaseModel):
    """One step's outcome in the execution document."""

    status: StepStatus
    attempts: int = 0
    duration_ms: int = 0
    output: Any = None
    error: str | None = None


class Execution(BaseModel):
    """The execution document: webhook body, result-topic data, status endpoint."""

    execution_id: str
    flow: str
    status: ExecutionStatus
    input: dict[str, Any]
    steps: dict[str, StepResult] = Field(default_factory=dict)
    started_at: datetime = Field(default_factory=now)
    finished_at: datetime | None = None
    duration_ms: int | None = None
    error: str | None = None

    def finish(self, status: ExecutionStatus, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.finished_at = now()
        self.duration_ms = round((self.finished_at - self.started_at).total_seconds() * 1000)


class PushMessage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    data: str = ""
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

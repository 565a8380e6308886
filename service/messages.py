"""What crosses the wire: the request message, the push envelope, the front door's bodies.

The execution document they carry is the execution model's (service/execution.py).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.bounds import JSONRefused, parse_json
from service.errors import RejectedMessage
from service.execution import (
    EXECUTION_ID,
    FLOW_VERSION,
    Execution,
    ExecutionStatus,
    Moment,
    ParentRef,
    in_utc,
    is_execution_id,
    now,
)

# The original guide's test payload (its test_payload.json): the API's example.
SEED_PAYLOAD: dict[str, Any] = {
    "user_id": "test_user_123",
    "session_id": "test_session_456",
    "create_user_embedding": False,
    "process_profession_orchestrator": True,
    "process_vacancy_orchestrator": True,
}


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
    parent: ParentRef | None = Field(None, description="set by a flow step that starts it")
    replay_of: str | None = Field(
        None, pattern=EXECUTION_ID, description="set by a replay: the execution it replays"
    )
    flow_version: str | None = Field(
        None, pattern=FLOW_VERSION, description="the version of its flow it runs (else today's)"
    )
    trigger: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9-]{0,39}$", description="set by an event trigger"
    )

    @classmethod
    def of(cls, execution: Execution) -> RequestMessage:
        """The request message that runs `execution` (again): a stored one, whose record
        holds the rest (its version, what it replays)."""
        return cls(
            execution_id=execution.execution_id,
            flow=execution.flow,
            input=execution.input,
            webhook_url=execution.webhook_url,
            requested_at=execution.requested_at,
            parent=execution.parent,
        )

    def attributes(self, run: int = 1) -> dict[str, str]:
        """The message's attributes (the trace context is added where it is published)."""
        assert self.execution_id is not None
        attributes = {"execution_id": self.execution_id, "flow": self.flow}
        if run > 1:
            attributes["run"] = str(run)
        return attributes

    def resolve(self, message_id: str | None, publish_time: str | None) -> ExecutionRequest:
        """The request with its defaults: the message's id and publish time."""
        execution_id = self.execution_id or message_id
        if execution_id is None:
            raise ValueError("execution_id: required when the message has no messageId")
        if not is_execution_id(execution_id):  # the message id stands for it: no store takes it
            raise ValueError("execution_id: required, the messageId is not an execution id")
        return ExecutionRequest(
            execution_id=execution_id,
            flow=self.flow,
            input=self.input,
            webhook_url=self.webhook_url,
            requested_at=self.requested_at or _timestamp(publish_time),
            parent=self.parent,
            replay_of=self.replay_of,
            flow_version=self.flow_version,
            trigger=self.trigger,
        )


@dataclass(frozen=True, slots=True)
class ExecutionRequest:
    """A request message with its defaults filled in: what the push handler runs."""

    execution_id: str
    flow: str
    input: dict[str, Any]
    webhook_url: str | None
    requested_at: datetime
    parent: ParentRef | None = None
    replay_of: str | None = None
    flow_version: str | None = None
    trigger: str | None = None

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
            parent=self.parent,
            replay_of=self.replay_of,
            flow_version=self.flow_version,
            trigger=self.trigger,
        )


def _timestamp(text: str | None) -> datetime:
    """A message's publish time; now, when it is missing or not a usable time."""
    try:
        moment = datetime.fromisoformat(text) if text else now()
        return in_utc(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    except ValueError:
        return now()


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


class PushMessage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    data: str = Field(
        "",
        description="base64 of the request message: JSON with `flow` and `input` required",
        json_schema_extra={
            "contentEncoding": "base64",
            "contentMediaType": "application/json",
            "contentSchema": inline_schema(RequestMessage),
        },
    )
    attributes: dict[str, str] | None = None
    message_id: str | None = Field(None, alias="messageId")
    publish_time: str | None = Field(None, alias="publishTime")

    def raw(self) -> bytes:
        """The data, decoded; RejectedMessage if it is not base64."""
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise RejectedMessage("message.data: not valid base64") from None


class PushEnvelope(BaseModel):
    """The body Pub/Sub POSTs to a push endpoint."""

    model_config = ConfigDict(populate_by_name=True)

    message: PushMessage
    subscription: str | None = None
    delivery_attempt: int | None = Field(None, alias="deliveryAttempt")

    def request(self) -> ExecutionRequest:
        """The request message inside, strictly decoded, its defaults filled in;
        RejectedMessage naming the field when no redelivery can make it valid.

        A direct producer may leave out `execution_id` (the message id, stable across
        redeliveries, stands for it) and `requested_at` (the publish time).
        """
        raw = self.message.raw()
        try:
            payload = parse_json(raw)
        except JSONRefused as exc:
            raise RejectedMessage(f"message.data: {exc}") from None
        try:
            message = RequestMessage.model_validate(payload)
        except ValidationError as exc:
            raise RejectedMessage(describe(field_errors(exc, "message.data"))) from None
        try:
            return message.resolve(self.message.message_id, self.message.publish_time)
        except ValueError as exc:
            raise RejectedMessage(f"message.data.{exc}") from None


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

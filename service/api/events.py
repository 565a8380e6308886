"""POST /pubsub/events/{flow}/{trigger}: the push endpoint of a flow's event trigger
(one push subscription per trigger), verified like /pubsub/push.

Each event (service/engine/triggers.py) is decided at once, and acked unless the broker
cannot take its execution (503, redelivered):

- `when` false: acked, counted `filtered`;
- `input` that cannot be made or does not fit the flow: acked, a `rejected` execution
  naming the field (stored, on the result topic), counted `rejected`;
- otherwise an execution named by the trigger and the message id (a redelivery names the
  same one, which runs once), recorded `queued` and published through the one request
  publisher, in the event's trace: counted `started`. It runs on its own push.

An event for a trigger no flow declares (a subscription left behind) is acked and logged.
Counts: `orchestrator_trigger_total{flow, trigger, outcome}`. The embedded transport
delivers what is published to a trigger's topic here too (`started`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from service.api.bodies import json_body_read_here
from service.api.deps import Components, components_of
from service.api.frontdoor import record_queued, take_back
from service.api.push import pushed
from service.bounds import MAX_EVENT_PUSH_BYTES, MAX_REQUEST_BYTES
from service.engine.expressions import EvaluationError, Template, render_value
from service.engine.triggers import event_of, execution_id
from service.errors import BrokerUnavailable, RejectedMessage
from service.messages import PushEnvelope, RequestMessage, describe, field_errors, inline_schema
from service.telemetry import MESSAGE_ATTRIBUTE
from service.worker.handler import ACK, NACK_RETRY

log = structlog.get_logger(__name__)
router = APIRouter()


@router.post(
    "/pubsub/events/{flow}/{trigger}",
    status_code=ACK,
    summary="Pub/Sub push endpoint of a flow's trigger: starts its execution, then acks (204)",
    openapi_extra={
        **json_body_read_here(inline_schema(PushEnvelope)),
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("flow", "trigger")
        ],
    },
    responses={
        401: {"description": "missing or invalid push token"},
        403: {"description": "token of another service account"},
        503: {"description": "the broker cannot take the execution: redeliver later"},
    },
)
async def events(request: Request) -> Response:
    parts = components_of(request)  # not a dependency: a hot path (service/api/hotpaths.py)
    envelope = await pushed(parts, request, MAX_EVENT_PUSH_BYTES)
    if isinstance(envelope, Response):
        return envelope
    flow, trigger = request.path_params["flow"], request.path_params["trigger"]
    return Response(status_code=await started(parts, flow, trigger, envelope))


async def started(
    parts: Components, flow_name: str, trigger_name: str, envelope: PushEnvelope
) -> int:
    """What an event of `flow_name`'s trigger `trigger_name` leads to; the push's status."""
    flow = parts.flows.get(flow_name)
    trigger = flow.triggers.get(trigger_name) if flow is not None else None
    if flow is None or trigger is None:
        log.error(
            "event for a trigger no flow declares", flow=flow_name[:63], trigger=trigger_name[:40]
        )
        parts.metrics.triggers.add(
            1, {"flow": "unknown", "trigger": "unknown", "outcome": "unknown"}
        )
        return ACK
    labels = {"flow": flow.name, "trigger": trigger.name}
    message = envelope.message
    attributes = message.attributes or {}
    with structlog.contextvars.bound_contextvars(flow=flow.name, trigger=trigger.name):
        try:
            if not message.message_id:
                raise RejectedMessage("message.messageId: required")
            named = execution_id(flow.name, trigger.name, message.message_id)
            event = event_of(message.raw(), attributes, message.message_id, message.publish_time)
            if not _passes(trigger.when, event):
                parts.metrics.triggers.add(1, labels | {"outcome": "filtered"})
                return ACK
            flow_input = flow.validate_input(_made(trigger.input, event))
            start = RequestMessage(
                execution_id=named, flow=flow.name, input=flow_input, trigger=trigger.name
            )
            size = len(start.model_dump_json())
            if size > MAX_REQUEST_BYTES:  # as the front door's bound: what a push takes
                raise RejectedMessage(f"input: {size} bytes of JSON, at most {MAX_REQUEST_BYTES}")
        except (RejectedMessage, ValidationError) as exc:
            reason = _reason(exc)
            log.warning("event rejected", reason=reason)
            rejected = RejectedMessage(reason, named if message.message_id else None)
            await parts.push.reject(rejected, message.message_id, flow.name)
            parts.metrics.triggers.add(1, labels | {"outcome": "rejected"})
            return ACK
        recorded = asyncio.ensure_future(record_queued(parts.store, start))
        try:
            await parts.requests.publish(start, traceparent=attributes.get(MESSAGE_ATTRIBUTE))
        except BaseException as exc:  # as the front door: no `queued` left that will not run
            if await recorded:
                await take_back(parts.store, named)
            if not isinstance(exc, BrokerUnavailable):
                raise
            log.warning("event not started; nacked", reason=str(exc), retryable=True)
            return NACK_RETRY
        await recorded
        parts.metrics.triggers.add(1, labels | {"outcome": "started"})
        log.debug("event started an execution", execution_id=named)  # as accepted requests
        return ACK


def _passes(when: Template | None, event: dict[str, Any]) -> bool:
    try:
        return when is None or bool(when.render({"event": event}))
    except EvaluationError as exc:
        raise RejectedMessage(str(exc)) from None  # it names the trigger's field


def _made(template: Any, event: dict[str, Any]) -> Any:
    try:
        return render_value(template, {"event": event})
    except EvaluationError as exc:
        raise RejectedMessage(str(exc)) from None


def _reason(exc: RejectedMessage | ValidationError) -> str:
    if isinstance(exc, ValidationError):
        return describe(field_errors(exc, "input"))
    return exc.reason

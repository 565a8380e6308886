"""The front door: POST /orchestrate accepts a request and publishes it; status reads."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from service.api.bodies import json_body, json_body_read_here, read_body
from service.api.deps import Components, ComponentsDep, components_of
from service.api.problems import Problem, documented, invalid, unavailable, unknown_execution
from service.backends.store import OperatorStore
from service.bounds import MAX_REQUEST_BYTES
from service.errors import BrokerUnavailable, OrchestratorError, WebhookTargetRefused
from service.execution import EXECUTION_ID, Execution, ExecutionStatus, now
from service.messages import Accepted, OrchestrateRequest, RequestMessage, field_errors

log = structlog.get_logger(__name__)
router = APIRouter()

# Idempotency keys map to execution ids in their own namespace: uuid5(namespace, flow + key).
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c1a52-3b8e-4a3c-9a51-2d1b6e0f7c11")
MAX_IDEMPOTENCY_KEY = 255
# A job's full name (projects/P/locations/L/jobs/ID, its ID up to 500 characters), and
# an RFC 3339 time.
MAX_SCHEDULER_JOB_NAME = 1024
MAX_SCHEDULE_TIME = 64
# The accepted answer waits this long at most for the `queued` record (a write takes
# milliseconds); past it the record is given up, and the claim records the execution.
QUEUED_RECORD_WAIT_S = 2.0

# An execution id in a path: what no execution can be named is refused (422), on any store.
ExecutionId = Annotated[str, Path(pattern=EXECUTION_ID, description="the execution's id")]


def idempotency_header(scope: str) -> dict[str, Any]:
    """The Idempotency-Key header in OpenAPI, its key naming one execution within `scope`."""
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": f"the same key ({scope}) gives the same execution id",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
    }


@router.post(
    "/orchestrate",
    status_code=202,
    response_model=Accepted,
    summary="Accept a request and publish it for execution",
    openapi_extra={
        **json_body_read_here(OrchestrateRequest.model_json_schema()),
        "parameters": [idempotency_header("for the same flow")],
    },
    responses={
        400: documented(
            "body is not strict JSON (NaN, numbers beyond a double, nesting deeper than 64)"
        ),
        404: documented("unknown flow"),
        413: documented("body larger than 1 MB"),
        422: documented("a field is invalid (named in `errors`)"),
        503: documented("the broker is unreachable (nothing will run); retry after Retry-After"),
    },
)
async def orchestrate(request: Request) -> JSONResponse:
    # No FastAPI parameters on this hot path: solving them cost a quarter of its CPU.
    parts = components_of(request)
    status = 500
    try:
        response = await _accept(request, parts)
        status = response.status_code
        return response
    except Problem as exc:
        status = exc.status
        raise
    finally:
        parts.metrics.frontdoor_requests.add(1, {"status": str(status)})


async def _accept(request: Request, parts: Components) -> JSONResponse:
    idempotency_key = idempotency_key_of(request)
    payload = _json_object(await read_body(request, MAX_REQUEST_BYTES))
    flow_name = payload.pop("flow", None) or parts.settings.default_flow
    webhook_url = payload.pop("webhook_url", None)
    if not isinstance(flow_name, str):
        raise invalid([{"field": "flow", "reason": "must be a string"}])
    if webhook_url is not None and not isinstance(webhook_url, str):
        raise invalid([{"field": "webhook_url", "reason": "must be a string"}])
    flow = parts.flows.get(flow_name)
    if flow is None:
        known = ", ".join(sorted(parts.flows))
        raise Problem(
            404,
            "Unknown flow",
            f"flow: no flow named {flow_name[:63]!r} (known: {known})",
            errors=[{"field": "flow", "reason": "unknown flow"}],
        )
    try:
        flow_input = flow.validate_input(payload)
    except ValidationError as exc:
        raise invalid(field_errors(exc)) from None
    if webhook_url is not None:
        try:
            await parts.targets.check(webhook_url)
        except WebhookTargetRefused as exc:
            raise invalid([{"field": "webhook_url", "reason": str(exc)}]) from None

    execution_id = _execution_id(request, flow.name, idempotency_key)
    message = RequestMessage(
        execution_id=execution_id,
        flow=flow.name,
        input=flow_input,
        webhook_url=webhook_url,
        requested_at=now(),
    )
    recorded = asyncio.ensure_future(record_queued(parts.store, message))
    try:
        await publish(parts, message, "the request was not accepted")
    except BaseException:
        if await recorded:  # not accepted: nothing is shown of it
            await take_back(parts.store, execution_id)
        raise
    await recorded
    status_url = f"{request.base_url}executions/{execution_id}"
    accepted = Accepted(execution_id=execution_id, flow=flow.name, status_url=status_url)
    return JSONResponse(accepted.model_dump(), 202, headers={"Location": status_url})


@router.get(
    "/executions/{execution_id}",
    response_model=Execution,
    summary="The execution document",
    responses={
        404: documented("unknown execution"),
        422: documented("not an execution id"),
        503: documented("the store is unreachable; retry after Retry-After"),
    },
)
async def get_execution(execution_id: ExecutionId, parts: ComponentsDep) -> Execution:
    execution = await parts.store.get(execution_id)
    if execution is None:
        raise unknown_execution(execution_id)
    return execution


async def publish(parts: Components, message: RequestMessage, refusal: str, run: int = 1) -> None:
    """Hand a request message to the broker; 503 with Retry-After when it cannot take it."""
    try:
        await parts.requests.publish(message, run)
    except BrokerUnavailable as exc:
        raise unavailable(exc, refusal) from None


async def record_queued(store: OperatorStore, message: RequestMessage) -> bool:
    """Make the execution readable as `queued` until a delivery claims it; whether it
    was recorded now.

    While its message is published (a round trip each: together, not one after the
    other); taken back if the publish fails. A claim that came first is kept. A store
    that fails or is slow (past QUEUED_RECORD_WAIT_S) costs only the early view: the
    broker has the message, so it is logged, not refused.
    """
    queued = message.resolve(None, None).execution(ExecutionStatus.QUEUED)
    try:
        async with asyncio.timeout(QUEUED_RECORD_WAIT_S):
            return await store.enqueue(queued)
    except TimeoutError:
        log.warning("accepted execution not recorded as queued", reason="the store is slow")
    except OrchestratorError as exc:
        log.warning("accepted execution not recorded as queued", reason=str(exc))
    return False


async def take_back(store: OperatorStore, execution_id: str) -> None:
    """Remove the queued record of a request that was refused (its message not published)."""
    try:
        async with asyncio.timeout(QUEUED_RECORD_WAIT_S):
            await store.unqueue(execution_id)
    except (TimeoutError, OrchestratorError) as exc:
        # Shown as queued until its TTL, though nothing will run it.
        log.error("a refused request's queued record stays", reason=str(exc) or "slow store")


def _execution_id(request: Request, flow: str, idempotency_key: str | None) -> str:
    """A new id; the same one for the same Idempotency-Key, or for the same Cloud Scheduler
    job and schedule time (a job's retries of one run share them), so neither a
    producer's retry nor a scheduler's starts a second execution."""
    job = request.headers.get("x-cloudscheduler-jobname")
    at = request.headers.get("x-cloudscheduler-scheduletime")
    if job and at:
        # Refused, never ignored: each retry of the job would start another execution.
        for header, value, bound in (
            ("X-CloudScheduler-JobName", job, MAX_SCHEDULER_JOB_NAME),
            ("X-CloudScheduler-ScheduleTime", at, MAX_SCHEDULE_TIME),
        ):
            if len(value) > bound:
                raise invalid([{"field": header, "reason": f"at most {bound} characters"}])
        idempotency_key = f"cloud-scheduler\n{job}\n{at}"
    if idempotency_key is None:
        return str(uuid.uuid4())
    return keyed_execution_id(flow, idempotency_key)


def idempotency_key_of(request: Request) -> str | None:
    """The request's Idempotency-Key header, if any; 422 naming it if it is empty or long."""
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        reason = f"1 to {MAX_IDEMPOTENCY_KEY} characters"
        raise invalid([{"field": "Idempotency-Key", "reason": reason}])
    return key


def keyed_execution_id(scope: str, key: str) -> str:
    """The execution an idempotency key names within `scope` (a flow, a replayed execution)."""
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{scope}\n{key}"))


def _json_object(body: bytes) -> dict[str, Any]:
    payload = json_body(body)
    if not isinstance(payload, dict):
        raise invalid([{"field": "(body)", "reason": "must be a JSON object"}])
    return payload

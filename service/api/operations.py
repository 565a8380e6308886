"""The operators' API: find executions, cancel them, re-drive them (one or in bulk), and
read the metrics.

Every route here depends on `operator`: open in local development, a Google ID
token of ADMIN_EMAILS in production, closed (403 naming the setting) otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import structlog
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.api.bodies import json_body, json_body_read_here, read_body
from service.api.deps import Components, ComponentsDep, components_of
from service.api.frontdoor import ExecutionId
from service.api.inbound_auth import AuthRefused
from service.api.problems import (
    RETRY_AFTER_S,
    Problem,
    documented,
    invalid,
    unavailable,
    unknown_execution,
)
from service.backends.listing import ExecutionQuery, PageTokenInvalid
from service.backends.store import Conflict
from service.bounds import MAX_OPERATOR_BODY_BYTES
from service.engine.graph import described
from service.errors import BrokerUnavailable, StoreUnavailable
from service.execution import (
    EXECUTION_ID,
    REDRIVABLE,
    Execution,
    ExecutionStatus,
    ExecutionSummary,
    FlowVersion,
    Moment,
)
from service.messages import field_errors, inline_schema
from service.metrics import CONTENT_TYPE

log = structlog.get_logger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

MAX_LIST_LIMIT = 1000
# Re-drives of one bulk call in flight at once (each a store transaction and a publish).
BULK_CONCURRENCY = 10

_Responses = dict[int | str, dict[str, Any]]
_CONFLICT: _Responses = {409: documented("its status does not allow it")}
_UNKNOWN: _Responses = {404: documented("unknown execution")}
_UNKNOWN_FLOW: _Responses = {404: documented("unknown flow")}
REFUSED: _Responses = {
    401: documented("missing or invalid Google ID token"),
    403: documented("not an operator (ADMIN_EMAILS), or operations closed"),
    503: documented("the store or the broker is unreachable; retry after Retry-After"),
}


async def operator(request: Request) -> None:
    """Let operators in: ADMIN_EMAILS by Google ID token; see the module's docstring."""
    try:
        await components_of(request).operators.check(request.headers.get("authorization"))
    except AuthRefused as exc:
        raise Problem(exc.status, "Not an operator", str(exc)) from None


router = APIRouter(dependencies=[Depends(operator)], responses=REFUSED)


class ExecutionList(BaseModel):
    """A page of executions, newest first; `next_page_token` reads the next one."""

    executions: list[ExecutionSummary]
    next_page_token: str | None


@router.get(
    "/executions",
    response_model=ExecutionList,
    summary="Executions, newest first, filtered and paged",
    responses={422: documented("a parameter is invalid (named in `errors`)")},
)
async def list_executions(
    parts: ComponentsDep,
    status: Annotated[list[ExecutionStatus] | None, Query(description="repeatable")] = None,
    flow: Annotated[str | None, Query(max_length=63)] = None,
    since: Annotated[Moment | None, Query(description="requested at or after")] = None,
    until: Annotated[Moment | None, Query(description="requested before")] = None,
    parent: Annotated[
        str | None, Query(pattern=EXECUTION_ID, description="a parent's child executions")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
) -> ExecutionList:
    query = ExecutionQuery(
        statuses=frozenset(status or ()),
        flow=flow,
        since=since,
        until=until,
        parent=parent,
        limit=limit,
        page_token=page_token,
    )
    try:
        page = await parts.store.list(query)
    except PageTokenInvalid as exc:
        raise invalid([{"field": "page_token", "reason": str(exc)}]) from None
    return ExecutionList(executions=page.executions, next_page_token=page.next_page_token)


@router.get(
    "/flows/{name}",
    summary="A flow's steps and dependencies (the dashboard draws its DAG from it), its "
    "version, and how many executions not ended run each version",
    responses=_UNKNOWN_FLOW,
)
async def get_flow(name: str, parts: ComponentsDep) -> dict[str, Any]:
    flow = parts.flows.get(name)
    if flow is None:
        raise Problem(404, "Unknown flow", f"no flow {name[:63]!r}")
    in_use = await parts.store.versions_in_use(name)
    return {**described(flow), "version": flow.version, "versions_in_use": in_use}


@router.get(
    "/metrics",
    summary="The orchestrator's metrics, in Prometheus' text format",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}},
)
async def metrics(parts: ComponentsDep) -> Response:
    return Response(parts.metrics.text(), media_type=CONTENT_TYPE)


class Cancelling(BaseModel):
    """A cancel taken: `cancelled` at once if it was queued, `cancelling` if it runs."""

    execution_id: str
    status: Literal["cancelled", "cancelling"]


class Redriven(BaseModel):
    """A re-drive taken: the next run is queued through the broker."""

    execution_id: str
    run: int
    status: Literal["queued"] = "queued"
    status_url: str


class Selection(BaseModel):
    """Which executions a bulk action takes (newest first, at most `limit`)."""

    model_config = ConfigDict(extra="forbid")

    status: list[ExecutionStatus] = Field(
        default_factory=lambda: [ExecutionStatus.FAILED], min_length=1
    )
    flow: str | None = Field(None, max_length=63)
    since: Moment | None = None
    until: Moment | None = None
    limit: int = Field(100, ge=1, le=MAX_LIST_LIMIT)

    def query(self) -> ExecutionQuery:
        return ExecutionQuery(
            statuses=frozenset(self.status),
            flow=self.flow,
            since=self.since,
            until=self.until,
            limit=self.limit,
        )


class BulkRedrive(Selection):
    """Which ended executions to run again (after an outage, say)."""

    @field_validator("status")
    @classmethod
    def _redrivable(cls, value: list[ExecutionStatus]) -> list[ExecutionStatus]:
        refused = [status.value for status in value if status not in REDRIVABLE]
        if refused:
            raise ValueError(f"only failed, partial and cancelled are re-driven, not {refused}")
        return value


class RedriveOptions(BaseModel):
    """How to re-drive one execution; the body is optional."""

    model_config = ConfigDict(extra="forbid")

    flow_version: Literal["pinned", "current"] = Field(
        "pinned", description="`current` moves the execution to today's flow definition"
    )


class BulkRedriven(BaseModel):
    count: int
    execution_ids: list[str]


# An action on one execution: accepted, or unknown, or refused by its status.
ON_ONE: dict[str, Any] = {"status_code": 202, "responses": {**_UNKNOWN, **_CONFLICT}}


@router.post(
    "/executions/{execution_id}/cancel",
    response_model=Cancelling,
    summary="Cancel a queued, running or waiting execution; its result is delivered as `cancelled`",
    **ON_ONE,
)
async def cancel(execution_id: ExecutionId, parts: ComponentsDep) -> Cancelling:
    before = await on_one(parts.wakes.cancel(execution_id), execution_id)
    log.info("cancel asked by an operator", execution_id=execution_id, was=before)
    done = before == ExecutionStatus.QUEUED
    return Cancelling(execution_id=execution_id, status="cancelled" if done else "cancelling")


@router.post(
    "/executions/{execution_id}/redrive",
    response_model=Redriven,
    summary="Run an ended failed, partial or cancelled execution again (what succeeded is kept)",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": inline_schema(RedriveOptions)}},
        }
    },
    **ON_ONE,
)
async def redrive(execution_id: ExecutionId, request: Request, parts: ComponentsDep) -> Redriven:
    options = optional_body(RedriveOptions, await read_body(request, MAX_OPERATOR_BODY_BYTES))
    moved_to = None
    if options.flow_version == "current":
        flow = parts.flows.get(await _flow_of(parts, execution_id))
        if flow is None:
            raise Problem(409, "Conflict", "flow_version: the execution's flow is gone")
        moved_to = FlowVersion(flow.version, frozenset(flow.steps))
    execution = await on_one(_redrive(parts, execution_id, moved_to), execution_id)
    status_url = f"{request.base_url}executions/{execution.execution_id}"
    return Redriven(execution_id=execution.execution_id, run=execution.run, status_url=status_url)


@router.post(
    "/executions/redrive",
    status_code=202,
    response_model=BulkRedriven,
    summary="Run again every ended execution that matches (newest first, at most `limit`)",
    openapi_extra=json_body_read_here(inline_schema(BulkRedrive)),
    responses={
        400: documented("body is not strict JSON"),
        413: documented(f"body larger than {MAX_OPERATOR_BODY_BYTES} bytes"),
        422: documented("a field is invalid (named in `errors`)"),
    },
)
async def redrive_many(request: Request, parts: ComponentsDep) -> BulkRedriven:
    # The body is read here, after `operator` let the caller in, and bounded: FastAPI
    # would read and parse a body parameter of any size before any dependency runs.
    selection = required_body(BulkRedrive, await read_body(request, MAX_OPERATOR_BODY_BYTES))
    page = await parts.store.list(selection.query())
    ids = [summary.execution_id for summary in page.executions]
    done = await each_of(ids, lambda execution_id: _redrive(parts, execution_id), "re-driven")
    redriven = [execution.execution_id for execution in done]
    log.info("bulk re-drive", count=len(redriven), listed=len(page.executions))
    return BulkRedriven(count=len(redriven), execution_ids=redriven)


async def each_of(
    ids: list[str], action: Callable[[str], Awaitable[T | None]], done: str
) -> list[T]:
    """`action` on each of `ids`, BULK_CONCURRENCY at a time: what it gave for those it
    took (one that changed since it was listed is passed over). Once the store or the
    broker fails, no new one starts, and the answer is a 503 saying how many were `done`."""
    at_once = asyncio.Semaphore(BULK_CONCURRENCY)
    stopped: list[str] = []  # why, once the store or the broker fails

    async def one(execution_id: str) -> T | None:
        async with at_once:
            if stopped:
                return None
            try:
                return await action(execution_id)
            except Conflict:
                return None  # it changed since it was listed (re-driven by another call, say)
            except StoreUnavailable as exc:
                stopped.append(str(exc))
            except Problem as exc:  # the broker's 503, or a refusal of this one
                if exc.status != 503:
                    return None
                stopped.append(exc.detail)
            return None

    ended = await asyncio.gather(*(one(execution_id) for execution_id in ids))
    taken = [outcome for outcome in ended if outcome is not None]
    if stopped:
        raise Problem(
            503,
            "Bulk action stopped",
            f"{len(taken)} of {len(ids)} {done} before: {stopped[0]}; calling again takes the rest",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    return taken


async def _flow_of(parts: Components, execution_id: str) -> str:
    execution = await parts.store.get(execution_id)
    if execution is None:
        raise unknown_execution(execution_id)
    return execution.flow


def required_body(model: type[M], body: bytes) -> M:
    """`body` as `model`: 422 naming the field when it is missing or does not fit."""
    if not body:
        raise invalid([{"field": "body", "reason": "required: a JSON object"}])
    return optional_body(model, body)


def optional_body(model: type[M], body: bytes) -> M:
    """`body` as `model`, its defaults when empty; 422 naming the field that does not fit."""
    try:
        return model.model_validate(json_body(body) if body.strip() else {})
    except ValidationError as exc:
        raise invalid(field_errors(exc, "body")) from None


async def _redrive(
    parts: Components, execution_id: str, moved_to: FlowVersion | None = None
) -> Execution | None:
    """Queue the next run, then publish it (503 if the broker refuses: nothing changed)."""
    try:
        return await parts.wakes.redrive(execution_id, moved_to)
    except BrokerUnavailable as exc:
        raise unavailable(exc, "not re-driven") from None


async def on_one(action: Awaitable[T | None], execution_id: str) -> T:
    """What an operator's action on one execution gave: 409 on Conflict, 404 for None."""
    try:
        done = await action
    except Conflict as exc:
        raise _conflict(exc) from None
    if done is None:
        raise unknown_execution(execution_id)
    return done


def _conflict(exc: Conflict) -> Problem:
    errors = [{"field": "status", "reason": str(exc)}]
    return Problem(409, "Conflict", f"status: {exc}", errors=errors)

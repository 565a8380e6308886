"""Model rollouts, for operators trying a new model or flow version: how its shadow
calls agree, an execution run again as a new one (a replay), and two executions
compared step by step.

`GET /flows/{name}/shadows` reads the latest ended executions of a flow (at most
MAX_SHADOW_READS) and answers, per step with a shadow, how many calls were shadowed,
the agreement rate and the median latency of the primary and of the candidate.

A replay is a new execution of the same flow and input, on today's version of its flow
or a `flow_version` kept in the store, recording `replay_of`; its result goes only to
a `webhook_url` given with it (neither DEFAULT_WEBHOOK_URL nor the result topic, whose
receivers would act on it). It is stored as `queued` before its message is published,
so a replay of an older version runs that version wherever the message lands.
An Idempotency-Key names the replay of each execution it is sent with: asked again, the
same one (published again, it runs once).
`GET /executions/{a}/compare/{b}` answers per step whether the outputs are equal JSON
and the JSON pointers where they differ (service/differences.py), in bounded work
however large the outputs.
"""

from __future__ import annotations

import asyncio
import statistics
import uuid
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from service.api.bodies import json_body_read_here, read_body
from service.api.deps import Components, ComponentsDep
from service.api.frontdoor import (
    ExecutionId,
    idempotency_header,
    idempotency_key_of,
    keyed_execution_id,
    publish,
    take_back,
)
from service.api.operations import (
    MAX_LIST_LIMIT,
    ON_ONE,
    REFUSED,
    Selection,
    each_of,
    operator,
    optional_body,
    required_body,
)
from service.api.problems import Problem, documented, invalid, unknown_execution
from service.backends.listing import ExecutionQuery
from service.bounds import MAX_OPERATOR_BODY_BYTES
from service.differences import MAX_POINTERS, WALK_BUDGET, differences
from service.errors import WebhookTargetRefused
from service.execution import (
    FLOW_VERSION,
    TERMINAL,
    Execution,
    ExecutionStatus,
    ItemResult,
    ShadowResult,
    StepStatus,
    now,
)
from service.messages import RequestMessage, inline_schema

log = structlog.get_logger(__name__)
router = APIRouter(dependencies=[Depends(operator)], responses=REFUSED)

# Of two executions compared, this many JSON nodes are walked at most, all steps together.
COMPARE_BUDGET = WALK_BUDGET * 5


MAX_SHADOW_READS = 200
READS_AT_ONCE = 10


class ShadowAgreement(BaseModel):
    """One step's shadow calls over the executions read."""

    step: str
    shadowed: int = Field(description="calls (or items) with a shadow's outcome")
    agree: int
    disagree: int
    errors: int = Field(description="no verdict: the candidate, the primary or `compare` failed")
    agreement: float | None = Field(description="agree / (agree + disagree)")
    primary_ms: int | None = Field(description="median latency of the calls used")
    shadow_ms: int | None = Field(description="median latency of the candidate's")


class ShadowReport(BaseModel):
    flow: str
    executions: int = Field(description="ended executions read, newest first")
    steps: list[ShadowAgreement]


class ReplayOptions(BaseModel):
    """How to replay; the body is optional."""

    model_config = ConfigDict(extra="forbid")

    flow_version: str | None = Field(
        None, pattern=FLOW_VERSION, description="a version of its flow kept in the store (today's)"
    )
    webhook_url: str | None = Field(None, max_length=2048, description="where its result goes")


class BulkReplay(Selection, ReplayOptions):
    """Which executions to replay (by default the latest succeeded), and how."""

    status: list[ExecutionStatus] = Field(
        default_factory=lambda: [ExecutionStatus.SUCCEEDED], min_length=1
    )
    limit: int = Field(100, ge=1, le=MAX_LIST_LIMIT)


class Replayed(BaseModel):
    """A replay taken: the new execution is queued through the broker."""

    execution_id: str
    replay_of: str
    flow: str
    flow_version: str
    status: Literal["queued"] = "queued"
    status_url: str


class BulkReplayed(BaseModel):
    count: int
    replays: list[Replayed]


class StepComparison(BaseModel):
    """One step of two executions: its statuses, and whether its outputs are equal JSON."""

    statuses: list[StepStatus | None]  # of the first, of the second (None: it has no outcome)
    equal: bool
    differences: list[str] = Field(description="JSON pointers into the output that differ")
    truncated: bool = Field(False, description="more differences than shown, or not all seen")


class Comparison(BaseModel):
    """Two executions, step by step (each step either has), and their results."""

    executions: list[str]
    equal: bool
    steps: dict[str, StepComparison]
    result: StepComparison


@router.get(
    "/flows/{name}/shadows",
    response_model=ShadowReport,
    summary="How a flow's shadow calls agree with the calls used, over its latest executions",
)
async def shadows(
    name: str,
    parts: ComponentsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_SHADOW_READS)] = 50,
) -> ShadowReport:
    if name not in parts.flows:
        raise Problem(404, "Unknown flow", f"no flow {name[:63]!r}")
    page = await parts.store.list(ExecutionQuery(statuses=TERMINAL, flow=name, limit=limit))
    at_once = asyncio.Semaphore(READS_AT_ONCE)

    async def read(execution_id: str) -> Execution | None:
        async with at_once:
            return await parts.store.get(execution_id)

    read_all = await asyncio.gather(*(read(s.execution_id) for s in page.executions))
    executions = [execution for execution in read_all if execution is not None]
    return ShadowReport(flow=name, executions=len(executions), steps=agreement(executions))


def agreement(executions: list[Execution]) -> list[ShadowAgreement]:
    """Per step with shadows' outcomes (in the order first met), how they went."""
    seen: dict[str, list[tuple[int, ShadowResult]]] = {}
    for execution in executions:
        for name, step in execution.steps.items():
            if step.shadow is not None:
                seen.setdefault(name, []).append((step.duration_ms, step.shadow))
            for item in step.items or ():
                if item.shadow is not None:
                    seen.setdefault(name, []).append((_took(item), item.shadow))
    report = []
    for name, outcomes in seen.items():
        shadows = [shadow for _, shadow in outcomes]
        agree = sum(1 for shadow in shadows if shadow.agree is True)
        disagree = sum(1 for shadow in shadows if shadow.agree is False)
        judged = agree + disagree
        answered = [s.duration_ms for s in shadows if s.status == StepStatus.SUCCEEDED]
        report.append(
            ShadowAgreement(
                step=name,
                shadowed=len(shadows),
                agree=agree,
                disagree=disagree,
                errors=sum(1 for shadow in shadows if shadow.agree is None),
                agreement=round(agree / judged, 4) if judged else None,
                primary_ms=_median([took for took, _ in outcomes]),
                shadow_ms=_median(answered),
            )
        )
    return report


def _took(item: ItemResult) -> int:
    if item.started_at is None or item.finished_at is None:
        return 0
    return round((item.finished_at - item.started_at).total_seconds() * 1000)


def _median(values: list[int]) -> int | None:
    return round(statistics.median(values)) if values else None


@router.post(
    "/executions/{execution_id}/replay",
    response_model=Replayed,
    summary="Run an execution's flow and input again, as a new execution (`replay_of`)",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": inline_schema(ReplayOptions)}},
        },
        "parameters": [idempotency_header("for the same execution")],
    },
    **ON_ONE,
)
async def replay(execution_id: ExecutionId, request: Request, parts: ComponentsDep) -> Replayed:
    key = idempotency_key_of(request)
    options = optional_body(ReplayOptions, await read_body(request, MAX_OPERATOR_BODY_BYTES))
    await _check_webhook(parts, options.webhook_url)
    original = await parts.store.get(execution_id)
    if original is None:
        raise unknown_execution(execution_id)
    return await _replay(parts, original, options, str(request.base_url), key)


@router.post(
    "/executions/replay",
    status_code=202,
    response_model=BulkReplayed,
    summary="Replay every execution that matches (newest first, at most `limit`)",
    openapi_extra={
        **json_body_read_here(inline_schema(BulkReplay)),
        "parameters": [idempotency_header("for the same execution, each its own replay")],
    },
    responses={
        400: documented("body is not strict JSON"),
        413: documented(f"body larger than {MAX_OPERATOR_BODY_BYTES} bytes"),
        422: documented("a field is invalid (named in `errors`)"),
    },
)
async def replay_many(request: Request, parts: ComponentsDep) -> BulkReplayed:
    key = idempotency_key_of(request)
    selection = required_body(BulkReplay, await read_body(request, MAX_OPERATOR_BODY_BYTES))
    await _check_webhook(parts, selection.webhook_url)
    page = await parts.store.list(selection.query())
    base_url = str(request.base_url)

    async def one(execution_id: str) -> Replayed | None:
        original = await parts.store.get(execution_id)
        if original is None:
            return None
        return await _replay(parts, original, selection, base_url, key)

    replays = await each_of([s.execution_id for s in page.executions], one, "replayed")
    log.info("bulk replay", count=len(replays), listed=len(page.executions))
    return BulkReplayed(count=len(replays), replays=replays)


@router.get(
    "/executions/{first}/compare/{second}",
    response_model=Comparison,
    summary="Two executions step by step: equal outputs or not, and where they differ",
    responses={404: documented("unknown execution")},
)
async def compare(first: ExecutionId, second: ExecutionId, parts: ComponentsDep) -> Comparison:
    executions = []
    for execution_id in (first, second):
        execution = await parts.store.get(execution_id)
        if execution is None:
            raise unknown_execution(execution_id)
        executions.append(execution)
    return compared(*executions)


def compared(a: Execution, b: Execution) -> Comparison:
    """Each step either execution has (in the first's order), and their results."""
    names = [*a.steps, *(name for name in b.steps if name not in a.steps)]
    budget = COMPARE_BUDGET // (len(names) + 1)
    steps = {}
    for name in names:
        left, right = a.steps.get(name), b.steps.get(name)
        found = differences(
            left.output if left else None, right.output if right else None, MAX_POINTERS, budget
        )
        statuses = [left.status if left else None, right.status if right else None]
        same = found.equal and statuses[0] == statuses[1]
        steps[name] = StepComparison(
            statuses=statuses,
            equal=same,
            differences=found.pointers,
            truncated=found.truncated,
        )
    found = differences(a.result, b.result, MAX_POINTERS, budget)
    result = StepComparison(
        statuses=[None, None],
        equal=found.equal,
        differences=found.pointers,
        truncated=found.truncated,
    )
    equal = result.equal and all(step.equal for step in steps.values())
    return Comparison(
        executions=[a.execution_id, b.execution_id], equal=equal, steps=steps, result=result
    )


async def _replay(
    parts: Components,
    original: Execution,
    options: ReplayOptions,
    base_url: str,
    key: str | None,
) -> Replayed:
    """Store the replay `queued`, then publish it (taken back if the broker refuses). With
    an idempotency key, the replay of `original` that key names: asked again, the same one
    (published again, it runs once)."""
    if original.status == ExecutionStatus.REJECTED:
        reason = "a rejected execution has no input to replay"
        raise Problem(409, "Conflict", f"status: {reason}", errors=[_error("status", reason)])
    version = await _version(parts, original.flow, options.flow_version)
    replay_id = keyed_execution_id(f"replay\n{original.execution_id}", key) if key else None
    message = RequestMessage(
        execution_id=replay_id or str(uuid.uuid4()),
        flow=original.flow,
        input=original.input,
        webhook_url=options.webhook_url,
        requested_at=now(),
        replay_of=original.execution_id,
        flow_version=version,
    )
    assert message.execution_id is not None
    queued = message.resolve(None, None).execution(ExecutionStatus.QUEUED)
    recorded = await parts.store.enqueue(queued)  # not again for a key asked before
    try:
        await publish(parts, message, "not replayed")
    except BaseException:
        if recorded:
            await take_back(parts.store, message.execution_id)
        raise
    log.info("replay", execution_id=message.execution_id, replay_of=original.execution_id)
    return Replayed(
        execution_id=message.execution_id,
        replay_of=original.execution_id,
        flow=original.flow,
        flow_version=version,
        status_url=f"{base_url}executions/{message.execution_id}",
    )


async def _version(parts: Components, flow: str, named: str | None) -> str:
    """The version a replay runs: `named` (kept in the store), else today's."""
    today = parts.flows.get(flow)
    if named is None or (today is not None and named == today.version):
        if today is None:
            reason = f"flow {flow!r} is no longer defined: name a flow_version kept in the store"
            raise Problem(
                409, "Conflict", f"flow_version: {reason}", errors=[_error("flow_version", reason)]
            )
        return today.version
    if await parts.store.flow_source(flow, named) is None:
        raise invalid([_error("flow_version", f"no version {named} of flow {flow!r} is kept")])
    return named


async def _check_webhook(parts: Components, webhook_url: str | None) -> None:
    if webhook_url is None:
        return
    try:
        await parts.targets.check(webhook_url)
    except WebhookTargetRefused as exc:
        raise invalid([_error("webhook_url", str(exc))]) from None


def _error(field: str, reason: str) -> dict[str, Any]:
    return {"field": field, "reason": reason}

"""Waiting executions from outside: a callback's answer, and the wake of due timers.

POST /callbacks/{token} needs no other credential: the token is unguessable and
names one step of one run (service/callback_tokens.py). POST /executions/wake is for
operators and for the push service account (PUSH_AUTH_SERVICE_ACCOUNT: the
identity Cloud Scheduler calls it with on Cloud Run). What they do is the worker's
(service/worker/wakes.py): an accepted callback sends the execution's resume at once.
"""

from __future__ import annotations

import contextlib

import structlog
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from service.api.bodies import read_body
from service.api.deps import ComponentsDep, components_of
from service.api.inbound_auth import AuthRefused
from service.api.operations import operator
from service.api.problems import Problem, documented
from service.backends.answers import Answer
from service.bounds import MAX_PAYLOAD_BYTES, JSONRefused, parse_json
from service.callback_tokens import read_callback_token

log = structlog.get_logger(__name__)

MAX_CALLBACK_BYTES = MAX_PAYLOAD_BYTES

router = APIRouter()


class CallbackAccepted(BaseModel):
    execution_id: str
    step: str


class Woken(BaseModel):
    woken: int


_REFUSALS = {
    Answer.ANSWERED: (409, "Already answered", "that step was answered already; nothing changed"),
    Answer.GONE: (410, "Gone", "the wait timed out, or its run or the execution ended"),
    Answer.UNKNOWN: (404, "Unknown callback", "no wait of any execution has this token"),
}


@router.post(
    "/callbacks/{token}",
    response_model=CallbackAccepted,
    summary="Answer a waiting step's callback: its JSON body becomes the step's output",
    responses={
        400: documented("body is not strict JSON"),
        404: documented("unknown or forged token"),
        409: documented("that step was answered already (nothing changes)"),
        410: documented("the wait timed out, or the execution ended or was cancelled"),
        413: documented(f"body larger than {MAX_CALLBACK_BYTES} bytes"),
    },
)
async def callback(token: str, request: Request) -> CallbackAccepted:
    parts = components_of(request)
    named = read_callback_token(token)
    if named is None:
        parts.metrics.callbacks.add(1, {"outcome": Answer.UNKNOWN.value})
        raise Problem(404, "Unknown callback", "token: not a callback token")
    body = await read_body(request, MAX_CALLBACK_BYTES)
    try:
        posted = parse_json(body) if body.strip() else None
    except JSONRefused as exc:
        raise Problem(400, "Body is not JSON", f"(body): {exc}") from None
    verdict = await parts.wakes.answer(named, posted)
    parts.metrics.callbacks.add(1, {"outcome": verdict.value})
    log.info("callback", execution_id=named.execution_id, step=named.step, outcome=verdict.value)
    if verdict != Answer.ACCEPTED:
        status, title, detail = _REFUSALS[verdict]
        raise Problem(status, title, f"token: {detail}")
    return CallbackAccepted(execution_id=named.execution_id, step=named.step)


async def waker(request: Request) -> None:
    """Operators, or the push service account (Cloud Scheduler's identity)."""
    parts = components_of(request)
    if parts.push_auth is not None:
        with contextlib.suppress(AuthRefused):
            await parts.push_auth.verify(request.headers.get("authorization"))
            return
    await operator(request)


@router.post(
    "/executions/wake",
    response_model=Woken,
    dependencies=[Depends(waker)],
    summary="Resume every waiting execution that is due (at most 500 a call)",
    responses={
        401: documented("missing or invalid Google ID token"),
        403: documented("neither an operator nor the push service account"),
        503: documented("the store is unreachable; retry after Retry-After"),
    },
)
async def wake(parts: ComponentsDep) -> Woken:
    return Woken(woken=await parts.wakes.wake())

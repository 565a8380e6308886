"""POST /pubsub/push: Pub/Sub's push endpoint, in front of the worker (service/worker/handler.py).

It checks the push token, bounds and parses the envelope (a body that can never be
valid is acked and reported), and answers the status the handler decides.
"""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from service.api.bodies import json_body_read_here, read_body
from service.api.deps import Components, components_of
from service.api.inbound_auth import AuthRefused
from service.api.problems import Problem
from service.bounds import MAX_PUSH_BYTES
from service.errors import RejectedMessage
from service.messages import PushEnvelope, describe, field_errors, inline_schema
from service.worker.handler import ACK

log = structlog.get_logger(__name__)

router = APIRouter()


@router.post(
    "/pubsub/push",
    status_code=ACK,
    summary="Pub/Sub push endpoint: runs the execution, then acks (204) or nacks",
    openapi_extra=json_body_read_here(inline_schema(PushEnvelope)),
    responses={
        401: {"description": "missing or invalid push token"},
        403: {"description": "token of another service account"},
        409: {"description": "the execution is running now: redeliver later"},
        503: {"description": "retryable failure: redeliver later"},
    },
)
async def push(request: Request) -> Response:
    parts = components_of(request)  # not a dependency: this is the hot path
    envelope = await pushed(parts, request)
    if isinstance(envelope, Response):
        return envelope
    return Response(status_code=await parts.push.handle(envelope))


async def pushed(
    parts: Components, request: Request, limit: int = MAX_PUSH_BYTES
) -> PushEnvelope | Response:
    """The envelope a push carries (of at most `limit` bytes), or the answer to a push
    refused (its token) or acked at once (a body no redelivery can make valid, reported)."""
    if parts.push_auth is not None:
        try:
            await parts.push_auth.verify(request.headers.get("authorization"))
        except AuthRefused as exc:
            log.warning("push refused", reason=str(exc), status_code=exc.status)
            return Response(status_code=exc.status)
    try:
        body = await read_body(request, limit)
        return PushEnvelope.model_validate_json(body)
    except (Problem, ValidationError) as exc:
        # Nothing can make this body valid later: ack it rather than have it pushed forever.
        await parts.push.reject(RejectedMessage(f"push envelope: {_reason(exc)}"), None)
        return Response(status_code=ACK)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return describe(field_errors(exc))
    return str(exc)

"""Request bodies read within their bounds: 413 past the limit, 400 for what is not JSON."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from service.api.problems import Problem
from service.bounds import JSONRefused, parse_json


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


def too_large(limit: int) -> Problem:
    return Problem(413, "Body too large", f"(body): larger than {limit} bytes")


def json_body(body: bytes) -> Any:
    """A request body's strict JSON, or 400 naming the reason."""
    try:
        return parse_json(body)
    except JSONRefused as exc:
        reason = str(exc)
        errors = [{"field": "(body)", "reason": reason}]
        raise Problem(400, "Body is not JSON", f"(body): {reason}", errors=errors) from None


def json_body_read_here(schema: dict[str, Any]) -> dict[str, Any]:
    """The `openapi_extra` of a route that reads its JSON body itself (bounded, after its
    checks), so that OpenAPI still shows the body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

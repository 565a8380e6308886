"""Bounds on what the service reads from clients, in one place."""

from __future__ import annotations

from fastapi import Request

from service.problems import Problem

MAX_REQUEST_BYTES = 1_000_000
# A request message is at most MAX_REQUEST_BYTES of JSON; base64 grows it by a third.
MAX_PUSH_BYTES = 1_500_000


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

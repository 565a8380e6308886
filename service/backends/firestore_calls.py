"""Calls to Firestore within a bound, their errors as the store's (service/errors.py).

Every call answers within its timeout (STORE_TIMEOUT_S): the client's own retries
of an unreachable Firestore last minutes, and a transaction cut short awaits its
rollback, so a call runs as a task that is left behind, cancelled, when its time is
up. Errors: InvalidArgument is StoreRefused (no retry can fix it); anything else, a
timeout, or a transaction the client gave up is StoreUnavailable: Contended when
others kept changing the document (an Aborted cause), else the error behind the
rollback ValueError that the client raises when Firestore cannot be reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from google.api_core import exceptions as google_exceptions

from service.errors import StoreRefused, StoreUnavailable

STORE_TIMEOUT_S = 10.0

# Calls cut short, still winding down (a transaction's rollback): kept until they end.
_LEFT_BEHIND: set[asyncio.Future[Any]] = set()


class Contended(StoreUnavailable):
    """Firestore gave up a transaction that others kept changing the document under."""


async def bounded(awaitable: Awaitable[Any], timeout_s: float) -> Any:
    """Await a call of the client within `timeout_s`, its errors as the store's."""
    call = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({call}, timeout=timeout_s)
    finally:
        if not call.done():  # timed out, or its caller was cancelled
            call.cancel()
            _LEFT_BEHIND.add(call)
            call.add_done_callback(_forget)
    if not call.done():
        raise StoreUnavailable(f"execution store: no answer in {timeout_s:g} s")
    try:
        return call.result()
    except Exception as exc:
        raise store_error(exc) from exc


def _forget(call: asyncio.Future[Any]) -> None:
    _LEFT_BEHIND.discard(call)
    if not call.cancelled():
        call.exception()  # retrieved: what it raised no longer matters to anyone


def store_error(exc: Exception) -> Exception:
    """What a failed client call means to the store's callers (the module's docstring)."""
    if isinstance(exc, google_exceptions.InvalidArgument):
        return StoreRefused(f"execution store: {exc}")
    if isinstance(exc, google_exceptions.GoogleAPIError):
        return StoreUnavailable(f"execution store: {exc}")
    if isinstance(exc, ValueError):  # a transaction the client gave up, or its rollback
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, google_exceptions.Aborted):
            return Contended(f"execution store: {exc}")
        if isinstance(cause, Exception):
            return store_error(cause)
        return StoreUnavailable(f"execution store: {exc}")
    return exc  # ours (a Conflict, say), or a bug: as it is

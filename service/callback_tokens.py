"""Who may end a callback's wait: tokens.

A callback token names one step of one run of one execution and carries a secret; the
store keeps only the secret's SHA-256, so neither the execution document nor the store
can answer a callback.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from service.execution import is_execution_id, is_step_name

MAX_TOKEN_CHARS = 1024
MAX_RUN = 1_000_000  # runs of one execution (re-drives): far past any real count


@dataclass(frozen=True, slots=True)
class CallbackToken:
    """What a callback URL's token names, and the digest its secret must match."""

    execution_id: str
    step: str
    run: int
    secret_sha256: str

    def matches(self, stored_sha256: str | None) -> bool:
        return stored_sha256 is not None and hmac.compare_digest(self.secret_sha256, stored_sha256)


def new_callback_token(execution_id: str, step: str, run: int) -> tuple[str, str]:
    """A fresh token for the step's wait, and the SHA-256 of its secret (what is stored)."""
    secret = secrets.token_urlsafe(32)
    named = json.dumps([execution_id, step, run], separators=(",", ":")).encode()
    head = base64.urlsafe_b64encode(named).decode().rstrip("=")
    return f"{head}.{secret}", _sha256(secret)


def read_callback_token(token: str) -> CallbackToken | None:
    """The token's parts; None for anything no `new_callback_token` could have made: its
    execution id, step name and run are checked here, before any store reads them."""
    head, _, secret = token.rpartition(".")
    if not head or len(token) > MAX_TOKEN_CHARS or len(secret) < 32:
        return None
    try:
        named = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not (
        isinstance(named, list)
        and len(named) == 3
        and isinstance(named[0], str)
        and is_execution_id(named[0])
        and isinstance(named[1], str)
        and is_step_name(named[1])
        and type(named[2]) is int
        and 1 <= named[2] <= MAX_RUN
    ):
        return None
    return CallbackToken(named[0], named[1], named[2], _sha256(secret))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()

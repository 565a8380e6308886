"""Listing executions: the query (filters, all optional), its page, and the page token,
an opaque cursor after an execution's sort key (newest first), the same in both stores."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from service.execution import ExecutionStatus, ExecutionSummary, in_utc, is_execution_id


@dataclass(frozen=True, slots=True)
class ExecutionQuery:
    """Which executions to list: every filter is optional."""

    statuses: Collection[ExecutionStatus] = ()
    flow: str | None = None
    since: datetime | None = None  # requested at or after
    until: datetime | None = None  # requested before
    parent: str | None = None  # children of this execution only
    limit: int = 100
    page_token: str | None = None

    def matches(self, execution: ExecutionSummary) -> bool:
        return (
            (not self.statuses or execution.status in self.statuses)
            and (self.flow is None or execution.flow == self.flow)
            and (self.since is None or execution.requested_at >= self.since)
            and (self.until is None or execution.requested_at < self.until)
            and (self.parent is None or _parent_id(execution) == self.parent)
        )


def _parent_id(execution: ExecutionSummary) -> str | None:
    return execution.parent.execution_id if execution.parent is not None else None


@dataclass(frozen=True, slots=True)
class Page:
    executions: list[ExecutionSummary]
    next_page_token: str | None


class PageTokenInvalid(ValueError):
    """A page token that no listing gave out."""


def page_token(execution: ExecutionSummary) -> str:
    """The cursor after `execution`: its sort key, opaque to clients."""
    key = f"{execution.requested_at.isoformat()}|{execution.execution_id}"
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def page_key(token: str) -> tuple[datetime, str]:
    """The sort key a page token stands for; PageTokenInvalid if it is not one of ours."""
    try:
        key = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        moment, execution_id = key.split("|", 1)
        after = datetime.fromisoformat(moment)
        valid = after.tzinfo is not None and is_execution_id(execution_id)
        if valid:
            after = in_utc(after)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        valid = False
    if not valid:
        raise PageTokenInvalid("not a page token of this listing")
    return after, execution_id


def sort_key(execution: ExecutionSummary) -> tuple[datetime, str]:
    """Listings are newest first by this key."""
    return execution.requested_at, execution.execution_id

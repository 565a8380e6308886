"""The operators' API: find executions (and, next, cancel and re-drive them).

Every route here depends on `operator`: open in local development, a Google ID
token of ADMIN_EMAILS in production, closed (403 naming the setting) otherwise.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, BaseModel

from service.auth import AuthRefused
from service.deps import ComponentsDep, components_of
from service.messages import ExecutionStatus, ExecutionSummary
from service.problems import MEDIA_TYPE, Problem, invalid
from service.store import ExecutionQuery, PageTokenInvalid

MAX_LIST_LIMIT = 1000

_PROBLEM: dict[str, Any] = {"content": {MEDIA_TYPE: {}}}
_REFUSED: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid Google ID token", **_PROBLEM},
    403: {"description": "not an operator (ADMIN_EMAILS), or operations closed", **_PROBLEM},
}


async def operator(request: Request) -> None:
    """Let operators in: ADMIN_EMAILS by Google ID token; see the module's docstring."""
    try:
        await components_of(request).operators.check(request.headers.get("authorization"))
    except AuthRefused as exc:
        raise Problem(exc.status, "Not an operator", str(exc)) from None


router = APIRouter(dependencies=[Depends(operator)], responses=_REFUSED)


class ExecutionList(BaseModel):
    """A page of executions, newest first; `next_page_token` reads the next one."""

    executions: list[ExecutionSummary]
    next_page_token: str | None


@router.get(
    "/executions",
    response_model=ExecutionList,
    summary="Executions, newest first, filtered and paged",
    responses={422: {"description": "a parameter is invalid (named in `errors`)", **_PROBLEM}},
)
async def list_executions(
    parts: ComponentsDep,
    status: Annotated[list[ExecutionStatus] | None, Query(description="repeatable")] = None,
    flow: Annotated[str | None, Query(max_length=63)] = None,
    since: Annotated[AwareDatetime | None, Query(description="requested at or after")] = None,
    until: Annotated[AwareDatetime | None, Query(description="requested before")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
) -> ExecutionList:
    query = ExecutionQuery(
        statuses=frozenset(status or ()),
        flow=flow,
        since=since,
        until=until,
        limit=limit,
        page_token=page_token,
    )
    try:
        page = await parts.store.list(query)
    except PageTokenInvalid as exc:
        raise invalid([{"field": "page_token", "reason": str(exc)}]) from None
    return ExecutionList(executions=page.executions, next_page_token=page.next_page_token)

"""Error answers as `application/problem+json` (RFC 9457), each naming the field at fault."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.errors import BrokerUnavailable, StoreRefused, StoreUnavailable
from service.messages import describe

log = structlog.get_logger(__name__)

MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_S = "5"


def loggable(path: str) -> str:
    """A request path fit for a log line: a callback's token is a credential."""
    return "/callbacks/(token)" if path.startswith("/callbacks/") else path


class Problem(Exception):
    """An error answer; raise it from a route."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.headers = errors, headers

    def response(self, instance: str | None = None) -> JSONResponse:
        body: dict[str, Any] = {"type": "about:blank", "title": self.title, "status": self.status}
        body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = self.errors
        return JSONResponse(body, self.status, headers=self.headers, media_type=MEDIA_TYPE)


def documented(description: str) -> dict[str, Any]:
    """An OpenAPI response whose body is a problem document."""
    return {"description": description, "content": {MEDIA_TYPE: {}}}


def unknown_execution(execution_id: str) -> Problem:
    return Problem(404, "Unknown execution", f"no execution {execution_id[:128]!r}")


def unavailable(exc: BrokerUnavailable | StoreUnavailable, refusal: str | None = None) -> Problem:
    """503 with Retry-After: the broker or the store cannot answer now."""
    title = "Broker unavailable" if isinstance(exc, BrokerUnavailable) else "Store unavailable"
    detail = f"{refusal}: {exc}" if refusal else str(exc)
    return Problem(503, title, detail, headers={"Retry-After": RETRY_AFTER_S})


def invalid(errors: list[dict[str, str]]) -> Problem:
    """422 naming every field that failed validation."""
    return Problem(422, "Request validation failed", describe(errors), errors=errors)


def install(app: FastAPI) -> None:
    """Render every error of the app as a problem document."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return exc.response(request.url.path)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": ".".join(str(part) for part in error["loc"]), "reason": error["msg"]}
            for error in exc.errors()
        ]
        return invalid(errors).response(request.url.path)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        title = str(exc.detail)
        problem = Problem(exc.status_code, title, title, headers=exc.headers)
        return problem.response(request.url.path)

    async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BrokerUnavailable | StoreUnavailable)
        log.warning("answered 503", path=loggable(request.url.path), reason=str(exc))
        return unavailable(exc).response(request.url.path)

    async def on_refused(request: Request, exc: Exception) -> JSONResponse:
        # What the request carried cannot be stored (too large, or not a valid name):
        # routes check their inputs first, so this is the net under them, never a 500.
        log.warning("refused by the store", path=loggable(request.url.path), reason=str(exc))
        return Problem(422, "Refused by the execution store", str(exc)).response(request.url.path)

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", path=loggable(request.url.path))
        problem = Problem(500, "Internal Server Error", "the error was logged")
        return problem.response(request.url.path)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(BrokerUnavailable, on_unavailable)
    app.add_exception_handler(StoreUnavailable, on_unavailable)
    app.add_exception_handler(StoreRefused, on_refused)
    app.add_exception_handler(Exception, on_error)

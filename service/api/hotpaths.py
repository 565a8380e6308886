"""The two paths that carry the load, served ahead of FastAPI's router.

    POST /orchestrate      every accepted request
    POST /pubsub/push      every delivery

FastAPI still declares both (OpenAPI, /docs, the same endpoint functions); this
middleware only takes them past the router's matching over every route, the
exception and exit-stack layers and `request_response`'s wrapping, which were
about half of the front door's CPU per request (PERFORMANCE.md). Their errors are
answered as the app answers them: a `Problem` as its problem document here, anything
else by the app's own 500 handler, which sits outside this middleware.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.problems import Problem

Endpoint = Callable[[Request], Awaitable[Response]]


class HotPaths:
    """ASGI middleware: `POST path` goes straight to `routes[path]`; the rest to the app."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, Endpoint]) -> None:
        self.app = app
        self._routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._routes.get(scope["path"])
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Problem as exc:
            response = exc.response(scope["path"])
        await response(scope, receive, send)

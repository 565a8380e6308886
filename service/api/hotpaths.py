"""The paths that carry the load, served ahead of FastAPI's router.

    POST /orchestrate                       every accepted request
    POST /pubsub/push                       every delivery
    POST /pubsub/events/{flow}/{trigger}    every event of a trigger

A path may hold `{name}` segments (each one whole segment): they reach the endpoint
as the router would give them, in `request.path_params`.

FastAPI still declares them (OpenAPI, /docs, the same endpoint functions); this
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
        self._routes = {path: e for path, e in routes.items() if "{" not in path}
        self._templates = [(path.split("/"), e) for path, e in routes.items() if "{" in path]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._routes.get(scope["path"]) or self._templated(scope)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Problem as exc:
            response = exc.response(scope["path"])
        await response(scope, receive, send)

    def _templated(self, scope: Scope) -> Endpoint | None:
        """The endpoint of the template `scope`'s path fits, its segments in path_params."""
        if not self._templates:
            return None
        segments = scope["path"].split("/")
        for template, endpoint in self._templates:
            if len(template) != len(segments):
                continue
            params = {}
            for part, segment in zip(template, segments, strict=True):
                if part.startswith("{"):
                    if not segment:
                        break
                    params[part[1:-1]] = segment
                elif part != segment:
                    break
            else:
                scope["path_params"] = params
                return endpoint
        return None

"""A real OTLP/HTTP receiver on loopback: decodes each export with opentelemetry-proto."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request, Response

from service.dev.servers import serve


@contextmanager
def otlp_receiver(path: str, message: Any) -> Iterator[tuple[str, list[Any]]]:
    """Serve POST `path` (e.g. /v1/traces); yields the base URL and the decoded `message`s."""
    received: list[Any] = []
    app = FastAPI()

    @app.post(path)
    async def export(request: Request) -> Response:
        received.append(message.FromString(await request.body()))
        return Response(status_code=200)

    with serve(app) as url:
        yield url, received

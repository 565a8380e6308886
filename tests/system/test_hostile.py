"""Hostile forms over every route the app declares, on both stores: ids in paths, callback
tokens, page tokens, query values, headers and bodies. None gets a 5xx: what no store can
hold is refused (4xx) before it reaches the store.

The routes are read from the app itself, so a route added later is swept too.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from urllib.parse import quote

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from service.app import create_app
from service.backends.store import ExecutionStore
from service.dev.servers import serve
from tests.support.fakes import RecordingTransport
from tests.support.project import make_settings, project_flows

# Each one a Firestore refusal or a client-side path error when it reached the store
# as a document id, a field path or a cursor; the rest are the usual suspects.
HOSTILE = [
    "a/b",
    "/",
    "",
    ".",
    "..",
    "__x__",
    "../../etc/passwd",
    "x" * 1600,
    "a\nb",
    "abc\n",
    "\x00",
    "ü" * 200,
    "' OR '1'='1",
    "${input.user_id}",
    "-1",
    "`x`",
    "a.b",
]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forged_tokens() -> list[str]:
    """Callback tokens in the right shape naming what no execution or step can be."""
    secret = "s" * 43
    named: list[list[object]] = [[value, "review", 1] for value in HOSTILE]
    named += [["e1", value, 1] for value in HOSTILE]
    named += [["e1", "review", run] for run in (0, -1, 10**30, True, 1.5, "1")]
    tokens = [f"{b64(json.dumps(parts).encode())}.{secret}" for parts in named]
    return [*tokens, *HOSTILE, f"{b64(b'[')}.{secret}", "." + secret]


def page_tokens() -> list[str]:
    """Cursors that decode to a time and an id no listing gave out."""
    times = ["2026-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+14:00"]
    return [b64(f"{t}|{value}".encode()) for t in times for value in HOSTILE] + HOSTILE


def bodies() -> list[bytes]:
    envelope = {"message": {"data": b64(b"{}"), "messageId": "m"}}
    pushes = []
    for value in HOSTILE:
        data = {"execution_id": value, "flow": "ml-orchestration", "input": {"user_id": "u"}}
        no_id = {"flow": value or "x", "input": {"user_id": "u"}}
        pushes += [
            {"message": {"data": b64(json.dumps(data).encode()), "messageId": "m"}},
            {"message": {"data": b64(json.dumps(no_id).encode()), "messageId": value}},
            {"message": {"data": "e30=", "attributes": {"execution_id": value}}},
        ]
    shapes: list[object] = [{}, [], "x", None, 1e308, envelope, *pushes]
    shapes += [{"flow": value, "user_id": value, "webhook_url": value} for value in HOSTILE]
    shapes += [{"status": [value], "flow": value, "since": value} for value in HOSTILE]
    shapes += [{"flow_version": value} for value in HOSTILE]
    return [b"", b"{", b"\xff\xfe", *(json.dumps(shape).encode() for shape in shapes)]


def headers() -> list[dict[str, str]]:
    found: list[dict[str, str]] = [{}]
    for value in ("", "x" * 9000, "Bearer", "Bearer " + "x" * 5000, "Bearer a.b.c", "Basic x"):
        found.append({"Authorization": value})
    for value in ("", "x" * 300, "a/b", "__x__"):
        found.append({"Idempotency-Key": value})
    for job, at in (("j" * 2000, "t"), ("a/b", "x" * 100), ("__x__", "..")):
        found.append({"X-CloudScheduler-JobName": job, "X-CloudScheduler-ScheduleTime": at})
    for value in ("00-" + "0" * 32 + "-" + "0" * 16 + "-01", "zz", "x" * 2000):
        found.append({"traceparent": value, "X-Cloud-Trace-Context": value})
    return found


def requests(app_routes: list[APIRoute]) -> Iterator[tuple[str, str, dict[str, object]]]:
    """(method, path, httpx arguments) for every route: each hostile path value, then on
    a plain path each hostile body, query value and header."""
    for route in app_routes:
        params = re.findall(r"{(\w+)}", route.path)
        values = forged_tokens() if "token" in params else HOSTILE
        queries = [q.alias for q in route.dependant.query_params]
        plain = route.path
        for param in params:
            plain = plain.replace(f"{{{param}}}", "e1")
        for method in sorted(route.methods - {"HEAD"}):
            for value in values if params else []:
                path = route.path
                for param in params:
                    path = path.replace(f"{{{param}}}", quote(value, safe=""))
                yield method, path, {"content": b"{}"} if method == "POST" else {}
            for body in bodies() if method == "POST" else []:
                yield method, plain, {"content": body}
            for value in HOSTILE + (page_tokens() if "page_token" in queries else []):
                for query in queries:
                    yield method, plain, {"params": {query: value}}
            for header in headers():
                yield method, plain, {"headers": header}


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every route of the app, those of the routers it includes too (FastAPI keeps an
    included router whole, as its `original_router`)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from api_routes(included.routes)
        elif isinstance(route, APIRoute):
            yield route


@pytest.fixture
def routes_and_url(store: ExecutionStore) -> Iterator[tuple[list[APIRoute], str]]:
    settings = make_settings(public_url="http://127.0.0.1:9")
    app = create_app(settings, project_flows("http://fn.invalid"), RecordingTransport(), store)
    routes = list(api_routes(app.routes))
    with serve(app) as url:
        yield routes, url


def test_no_hostile_form_on_any_route_gets_a_server_error(
    routes_and_url: tuple[list[APIRoute], str],
) -> None:
    routes, url = routes_and_url
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for method, path, arguments in requests(routes):
            asked = f"{method} {path[:80]} {arguments!r:.120}"
            try:
                response = client.request(method, path, **arguments)  # type: ignore[arg-type]
            except httpx.HTTPError as exc:  # the server broke the connection: a 500 in effect
                failures.append(f"{asked}: no answer ({exc!r})")
                continue
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"{asked}: {response.status_code} {response.text[:200]}")
    print(f"\n{sum(statuses.values())} hostile requests: {dict(sorted(statuses.items()))}")
    assert len(routes) >= 12  # every route of the app, not a few
    assert failures == []

"""The hot paths served ahead of FastAPI's router answer as the rest of the app does."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.api.events import events
from service.api.frontdoor import orchestrate
from service.api.hotpaths import HotPaths
from service.api.problems import MEDIA_TYPE
from service.api.push import push
from service.app import create_app
from service.dev.servers import serve
from service.messages import SEED_PAYLOAD
from tests.support.fakes import RecordingTransport
from tests.support.project import make_settings, project_flows


class BrokenTransport(RecordingTransport):
    """A transport with a bug: publishing raises what no code of ours expects."""

    async def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        raise RuntimeError("a bug, not an outage")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    app = create_app(make_settings(), project_flows(), BrokenTransport())
    with serve(app) as url, httpx.Client(base_url=url) as test_client:
        yield test_client


EVENTS = "/pubsub/events/{flow}/{trigger}"


def test_the_load_carrying_paths_go_the_hot_way() -> None:
    app = create_app(make_settings(), project_flows(), RecordingTransport())
    [hot] = [layer for layer in app.user_middleware if layer.cls is HotPaths]
    routes = {"/orchestrate": orchestrate, "/pubsub/push": push, EVENTS: events}
    assert hot.kwargs["routes"] == routes


def test_the_paths_stay_in_the_openapi_document(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/orchestrate"] and "post" in paths["/pubsub/push"]
    declared = {parameter["name"] for parameter in paths[EVENTS]["post"]["parameters"]}
    assert declared == {"flow", "trigger"}


async def test_a_templated_path_gives_its_segments_and_only_fits_whole_ones() -> None:
    seen: list[dict[str, str]] = []

    async def endpoint(request: Request) -> Response:
        seen.append(dict(request.path_params))
        return Response(status_code=204)

    async def rest(scope: Scope, receive: Receive, send: Send) -> None:
        await Response(status_code=404)(scope, receive, send)

    app = HotPaths(rest, {EVENTS: endpoint})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://hot") as hot:
        assert (await hot.post("/pubsub/events/exports/landed")).status_code == 204
        for other in ("/pubsub/events/exports", "/pubsub/events//landed", "/pubsub/events/a/b/c"):
            assert (await hot.post(other)).status_code == 404, other
        assert (await hot.get("/pubsub/events/exports/landed")).status_code == 404
    assert seen == [{"flow": "exports", "trigger": "landed"}]


def test_other_methods_on_a_hot_path_get_the_routers_405(client: httpx.Client) -> None:
    response = client.get("/orchestrate")
    assert response.status_code == 405
    assert response.headers["content-type"] == MEDIA_TYPE


def test_a_problem_is_answered_as_its_document(client: httpx.Client) -> None:
    response = client.post("/orchestrate", json={**SEED_PAYLOAD, "flow": "nope"})
    assert response.status_code == 404
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.json()["instance"] == "/orchestrate"


def test_an_unexpected_error_gets_the_apps_500_document(client: httpx.Client) -> None:
    response = client.post("/orchestrate", json=SEED_PAYLOAD)
    assert response.status_code == 500
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.json()["detail"] == "the error was logged"

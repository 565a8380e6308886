"""The hot paths served ahead of FastAPI's router answer as the rest of the app does."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

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


def test_both_load_carrying_paths_go_the_hot_way() -> None:
    app = create_app(make_settings(), project_flows(), RecordingTransport())
    [hot] = [layer for layer in app.user_middleware if layer.cls is HotPaths]
    assert hot.kwargs["routes"] == {"/orchestrate": orchestrate, "/pubsub/push": push}


def test_both_paths_stay_in_the_openapi_document(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/orchestrate"] and "post" in paths["/pubsub/push"]


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

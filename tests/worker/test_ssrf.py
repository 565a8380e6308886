"""Webhook targets under attack: a corpus of hostile URLs and a canary that must see nothing."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from service.app import create_app
from service.dev.servers import serve
from service.errors import WebhookTargetRefused
from service.worker.targets import WebhookTargets
from tests.support.fakes import RecordingTransport
from tests.support.project import make_settings, project_flows


class Canary:
    def __init__(self) -> None:
        self.hits: list[str] = []
        self.app = FastAPI()

        @self.app.api_route("/{path:path}", methods=["GET", "POST"])
        async def anything(request: Request) -> Response:
            self.hits.append(str(request.url))
            return Response(status_code=204)


@pytest.fixture(scope="module")
def canary() -> Iterator[tuple[Canary, int]]:
    bird = Canary()
    with serve(bird.app) as url:
        yield bird, int(url.rsplit(":", 1)[1])


def hostile(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/hook",
        f"http://localhost:{port}/hook",
        f"http://127.1:{port}/hook",
        f"http://2130706433:{port}/hook",
        f"http://0x7f000001:{port}/hook",
        f"http://0177.0.0.1:{port}/hook",
        f"http://0.0.0.0:{port}/hook",
        f"http://[::1]:{port}/hook",
        f"http://[::ffff:127.0.0.1]:{port}/hook",
        f"http://[0:0:0:0:0:ffff:7f00:1]:{port}/hook",
        "http://10.0.0.8/hook",
        "http://172.16.3.4/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/computeMetadata/v1/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://100.64.0.1/hook",
        "http://192.0.0.1/hook",
        "http://[fd00::1]/hook",
        "http://[fe80::1]/hook",
        "http://[::ffff:169.254.169.254]/hook",
        "http://224.0.0.1/hook",
        f"ftp://127.0.0.1:{port}/hook",
        "file:///etc/passwd",
        f"gopher://127.0.0.1:{port}/_x",
        f"http://user:pass@127.0.0.1:{port}/hook",
        "https://user@8.8.8.8/hook",
        "https:///no-host",
        "http://8.8.8.8:99999/hook",
        "https://" + "a" * 2100 + ".example/",
    ]


def test_the_front_door_refuses_every_hostile_target(canary: tuple[Canary, int]) -> None:
    bird, port = canary
    corpus = hostile(port)
    transport = RecordingTransport()
    app = create_app(make_settings(), project_flows(), transport)
    refused = 0
    with serve(app) as url, httpx.Client(base_url=url) as client:
        for target in corpus:
            body = {"user_id": "u", "session_id": "s", "webhook_url": target}
            response = client.post("/orchestrate", json=body)
            refused += response.status_code == 422 and "webhook_url" in response.text
    print(
        f"\nSSRF at the front door: {refused}/{len(corpus)} refused, canary hits {len(bird.hits)}"
    )
    assert refused == len(corpus)
    assert transport.published == []
    assert bird.hits == []


def test_delivery_refuses_hostile_targets_published_directly(canary: tuple[Canary, int]) -> None:
    """A producer may publish to the topic itself: the target is checked again before sending."""
    bird, port = canary
    corpus = hostile(port)
    transport = RecordingTransport()
    app = create_app(
        make_settings(result_topic="results"), project_flows("http://fn.invalid"), transport
    )
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        for target in corpus:
            message = {
                "execution_id": str(uuid.uuid4()),
                "flow": "ml-orchestration",
                "input": {"user_id": "u", "session_id": "s"},
                "webhook_url": target[:2048],
                "requested_at": "2026-11-25T10:00:00Z",
            }
            data = base64.b64encode(json.dumps(message).encode()).decode()
            response = client.post(
                "/pubsub/push", json={"message": {"data": data, "messageId": "1"}}
            )
            assert response.status_code == 204
    print(f"\nSSRF at delivery: {len(corpus)} hostile targets, canary hits {len(bird.hits)}")
    assert bird.hits == []
    assert len(transport.on("results")) == len(corpus)  # the results still reach the topic


def test_redirects_are_never_followed(canary: tuple[Canary, int]) -> None:
    bird, port = canary
    redirector = FastAPI()
    seen: list[int] = []

    @redirector.post("/hook")
    async def hook() -> Response:
        seen.append(1)
        return Response(status_code=307, headers={"Location": f"http://127.0.0.1:{port}/stolen"})

    transport = RecordingTransport()
    settings = make_settings(webhook_allow_private_networks=True)
    with serve(redirector) as hook_url:
        app = create_app(settings, project_flows("http://fn.invalid"), transport)
        with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            message = {
                "execution_id": str(uuid.uuid4()),
                "flow": "ml-orchestration",
                "input": {"user_id": "u", "session_id": "s"},
                "webhook_url": f"{hook_url}/hook",
                "requested_at": "2026-11-25T10:00:00Z",
            }
            data = base64.b64encode(json.dumps(message).encode()).decode()
            response = client.post(
                "/pubsub/push", json={"message": {"data": data, "messageId": "1"}}
            )
    assert response.status_code == 503  # a redirect is a failed delivery, retried later
    assert len(seen) == 4
    assert bird.hits == []


async def test_the_checked_address_is_the_one_connected_to() -> None:
    """DNS rebinding: the first answer is checked and pinned; no second lookup is made."""
    answers = [["93.184.216.34"], ["127.0.0.1"]]
    lookups: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        lookups.append(host)
        return answers[len(lookups) - 1]

    target = await WebhookTargets(resolver=rebinding).pin("https://hooks.example:8443/in?x=1")
    assert target.url == "https://93.184.216.34:8443/in?x=1"
    assert target.headers == {"host": "hooks.example:8443"}
    assert target.extensions == {"sni_hostname": "hooks.example"}
    assert lookups == ["hooks.example"]


async def test_one_private_answer_among_public_ones_refuses_the_host() -> None:
    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.1"]

    with pytest.raises(WebhookTargetRefused, match="private network"):
        await WebhookTargets(resolver=mixed).pin("https://hooks.example/in")


async def test_the_allow_list_refuses_other_hosts() -> None:
    async def public(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    targets = WebhookTargets(allowed_hosts=frozenset({"hooks.example"}), resolver=public)
    await targets.pin("https://hooks.example/in")
    with pytest.raises(WebhookTargetRefused, match="WEBHOOK_ALLOWED_HOSTS"):
        await targets.pin("https://elsewhere.example/in")


async def test_private_networks_can_be_allowed_for_local_development() -> None:
    await WebhookTargets(allow_private_networks=True).check("http://127.0.0.1:8081/webhook")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "http://u:p@127.0.0.1/"])
async def test_scheme_and_credentials_are_checked_even_when_private_is_allowed(url: str) -> None:
    with pytest.raises(WebhookTargetRefused):
        await WebhookTargets(allow_private_networks=True).check(url)


@pytest.mark.parametrize("url", ["https://8.8.8.8/hook", "http://[2001:4860:4860::8888]:8443/h"])
async def test_public_addresses_are_allowed(url: str) -> None:
    await WebhookTargets().check(url)

"""Google ID and access tokens through google-auth's real metadata-server path (a fake
server on loopback)."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi import FastAPI, Request

from service.app import create_app
from service.dev.servers import serve
from service.engine.flow import load_flow
from service.engine.outbound import http_clients
from service.engine.outbound_auth import GoogleAccessTokens, GoogleIdTokens, NoTokens
from service.engine.step import Step
from tests.support.engine import make_caller
from tests.support.fakes import RecordingTransport
from tests.support.identity import ACCESS_TOKEN, Identity
from tests.support.project import make_settings, project_flows
from tests.support.waits import until


async def test_a_token_is_fetched_for_the_audience_and_reused(
    metadata: Counter[str], identity: Identity
) -> None:
    tokens = GoogleIdTokens()
    audience = "https://fn-reuse.example/run"
    first = await tokens.headers(audience)
    second = await tokens.headers(audience)
    assert first == second
    token = first["Authorization"].removeprefix("Bearer ")
    assert identity.verify(token, audience=audience)["aud"] == audience
    assert metadata[audience] == 1


async def test_concurrent_callers_share_one_fetch_per_audience(metadata: Counter[str]) -> None:
    tokens = GoogleIdTokens()
    audiences = ["https://fn-a.example", "https://fn-b.example"]
    await asyncio.gather(*(tokens.headers(audiences[n % 2]) for n in range(50)))
    assert [metadata[a] for a in audiences] == [1, 1]


async def test_a_token_close_to_expiry_is_fetched_again(metadata: Counter[str]) -> None:
    """google-auth deems a token expired a few minutes early; such a token is replaced."""
    tokens = GoogleIdTokens()
    audience = "https://fn-expiring.example"
    await tokens.headers(audience)
    credentials = tokens._credentials[audience]
    credentials.expiry = credentials.expiry.replace(year=2000)
    await tokens.headers(audience)
    assert metadata[audience] == 2


async def test_the_fetch_runs_off_the_event_loop(metadata: Counter[str]) -> None:
    """While google-auth's blocking fetch runs, the loop keeps serving other tasks."""
    tokens = GoogleIdTokens()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await tokens.headers("https://fn-loop.example")
    task.cancel()
    assert ticks > 1


async def test_no_tokens_sends_no_header() -> None:
    assert await NoTokens().headers("https://anything") == {}


async def test_access_tokens_come_from_the_default_credentials_and_are_shared(
    metadata: Counter[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """google.auth.default() finds the (fake) metadata server, as on Cloud Run: one
    token for every audience, fetched once by concurrent callers, again near expiry."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud credentials here
    tokens = GoogleAccessTokens()
    before = metadata["access_token"]
    headers = await asyncio.gather(*(tokens.headers(f"https://api-{n}.example") for n in range(20)))
    assert {h["Authorization"] for h in headers} == {f"Bearer {ACCESS_TOKEN}-{before + 1}"}
    assert metadata["access_token"] == before + 1
    tokens._credentials[""].expiry = tokens._credentials[""].expiry.replace(year=2000)
    await tokens.headers("https://api-0.example")
    assert metadata["access_token"] == before + 2


async def test_each_step_sends_the_token_its_auth_asks_for(
    metadata: Counter[str], identity: Identity, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """auth: access_token reaches an API that checks the bearer; id_token an ID token for
    the URL; none nothing. Through the real caller and HTTP on loopback."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    seen: list[str | None] = []
    app = FastAPI()

    @app.post("/api")
    async def api(request: Request) -> dict[str, str]:
        seen.append(request.headers.get("authorization"))
        return {"ok": "yes"}

    with serve(app) as url:
        async with http_clients() as (_, sender):
            caller = make_caller(
                sender, id_tokens=GoogleIdTokens(), access_tokens=GoogleAccessTokens()
            )
            deadline = asyncio.get_running_loop().time() + 10
            for auth in ("access_token", "id_token", "none"):
                step = replace(_step(f"{url}/api"), auth=auth)
                assert (await caller.call(step, {}, deadline)).error is None
    access, id_token, none = seen
    assert access is not None and access.startswith(f"Bearer {ACCESS_TOKEN}-")
    assert id_token is not None
    assert identity.verify(id_token.removeprefix("Bearer "), f"{url}/api")["aud"] == f"{url}/api"
    assert none is None


def _step(url: str) -> Step:
    flow = Path(tempfile.mkdtemp()) / "one.yaml"
    flow.write_text(f"steps:\n  one:\n    call: {url}\n")
    return load_flow(flow, {}).steps["one"]


def test_the_tokens_of_every_audience_the_flows_call_are_fetched_at_start(
    metadata: Counter[str],
) -> None:
    """A new instance fetches each audience's ID token while it starts, all at once, so
    its first execution does not wait for them one step after another."""
    flows = project_flows(f"https://warm-{uuid.uuid4().hex[:8]}.example")
    audiences = {s.audience for f in flows.values() for s in f.steps.values() if s.url}
    app = create_app(make_settings(ml_auth="id_token"), flows, RecordingTransport())
    with serve(app):
        until(lambda: all(metadata[a] == 1 for a in audiences), 10, "not fetched at start")
    assert len(audiences) >= 4

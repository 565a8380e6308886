"""Google ID tokens through google-auth's real metadata-server path (a fake server on loopback)."""

from __future__ import annotations

import asyncio
from collections import Counter

from service.engine.outbound_auth import GoogleIdTokens, NoTokens
from tests.support.identity import Identity


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

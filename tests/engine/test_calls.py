"""The ML calls' HTTP path (engine.outbound.AiohttpSender) against a real loopback server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from service.dev.servers import serve
from service.engine.outbound import MAX_ANSWER_BYTES, AiohttpSender, NoAnswer, http_clients

# Asserts how long things take: run alone, after the parallel tier (scripts/test.sh).
pytestmark = pytest.mark.timing

seen: list[dict[str, object]] = []


async def echo(request: Request) -> Response:
    body = await request.body()
    seen.append({"method": request.method, "headers": dict(request.headers), "body": body})
    return JSONResponse({"got": json.loads(body) if body else None})


async def text(request: Request) -> Response:
    return PlainTextResponse("not JSON")


async def unavailable(request: Request) -> Response:
    return PlainTextResponse("busy " * 100, status_code=503, headers={"Retry-After": "7"})


async def slow(request: Request) -> Response:
    await asyncio.sleep(2)
    return JSONResponse({})


async def declared_huge(request: Request) -> Response:
    return Response(b"x" * (MAX_ANSWER_BYTES + 1))


async def streamed_huge(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_ANSWER_BYTES // 65536 + 2):
            yield b"x" * 65536

    return StreamingResponse(chunks())


async def redirect(request: Request) -> Response:
    return Response(status_code=302, headers={"Location": "/echo"})


async def cookie(request: Request) -> Response:
    response = JSONResponse({})
    response.set_cookie("session", "secret-of-one-execution")
    return response


ROUTES = {
    "/echo": echo,
    "/text": text,
    "/unavailable": unavailable,
    "/slow": slow,
    "/declared-huge": declared_huge,
    "/streamed-huge": streamed_huge,
    "/redirect": redirect,
    "/cookie": cookie,
}
APP = Starlette(routes=[Route(p, f, methods=["GET", "POST"]) for p, f in ROUTES.items()])


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve(APP) as base:
        yield base


@pytest.fixture
async def sender() -> AsyncIterator[AiohttpSender]:
    seen.clear()
    async with http_clients() as (_, sender):
        yield sender


async def test_a_post_carries_compact_json_and_the_given_headers(
    url: str, sender: AiohttpSender
) -> None:
    answer = await sender.send(
        "POST", f"{url}/echo", {"name": "Zoë", "n": [1, 2]}, {"Authorization": "Bearer t"}, 5
    )
    assert answer.status == 200
    assert json.loads(answer.content) == {"got": {"name": "Zoë", "n": [1, 2]}}
    assert seen[0]["body"] == '{"name":"Zoë","n":[1,2]}'.encode()
    headers = seen[0]["headers"]
    assert isinstance(headers, dict)
    assert headers["authorization"] == "Bearer t"
    assert headers["content-type"] == "application/json"


async def test_a_get_sends_no_body(url: str, sender: AiohttpSender) -> None:
    answer = await sender.send("GET", f"{url}/echo", {"ignored": True}, {}, 5)
    assert json.loads(answer.content) == {"got": None}
    assert seen[0]["method"] == "GET" and seen[0]["body"] == b""


async def test_an_error_answer_keeps_its_status_body_and_retry_after(
    url: str, sender: AiohttpSender
) -> None:
    answer = await sender.send("POST", f"{url}/unavailable", {}, {}, 5)
    assert (answer.status, answer.retry_after) == (503, "7")
    assert answer.content.startswith(b"busy busy")
    assert (await sender.send("POST", f"{url}/text", {}, {}, 5)).content == b"not JSON"


async def test_a_redirect_is_an_answer_not_followed(url: str, sender: AiohttpSender) -> None:
    answer = await sender.send("POST", f"{url}/redirect", {}, {}, 5)
    assert answer.status == 302
    assert seen == []


async def test_the_timeout_bounds_the_whole_attempt(url: str, sender: AiohttpSender) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NoAnswer) as refused:
        await sender.send("POST", f"{url}/slow", {}, {}, 0.2)
    assert loop.time() - started < 1.5
    assert str(refused.value) == "timed out after 0.2 s" and refused.value.retryable


async def test_a_closed_port_is_a_retryable_connect_failure(sender: AiohttpSender) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(NoAnswer) as refused:
        await sender.send("POST", f"http://127.0.0.1:{port}/x", {}, {}, 5)
    assert str(refused.value).startswith("cannot connect:") and refused.value.retryable


async def test_a_connection_closed_without_an_answer_is_retryable(sender: AiohttpSender) -> None:
    """A function that crashes mid-request (or a stale pooled connection) may answer the retry."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(NoAnswer) as refused:
            await sender.send("POST", f"http://127.0.0.1:{port}/x", {}, {}, 5)
    finally:
        server.close()
        await server.wait_closed()
    assert str(refused.value).startswith("connection lost:") and refused.value.retryable


@pytest.mark.parametrize("path", ["/declared-huge", "/streamed-huge"])
async def test_an_answer_over_the_bound_is_refused_and_not_retried(
    url: str, sender: AiohttpSender, path: str
) -> None:
    with pytest.raises(NoAnswer) as refused:
        await sender.send("POST", url + path, {}, {}, 30)
    assert str(refused.value) == f"answer larger than {MAX_ANSWER_BYTES} bytes"
    assert not refused.value.retryable


async def test_cookies_a_function_sets_are_not_sent_back(url: str, sender: AiohttpSender) -> None:
    """One session serves every execution: a cookie would carry one's state into another's."""
    named = url.replace("127.0.0.1", "localhost")  # aiohttp keeps no cookies of IP addresses
    await sender.send("POST", f"{named}/cookie", {}, {}, 5)
    await sender.send("POST", f"{named}/echo", {}, {}, 5)
    headers = seen[0]["headers"]
    assert isinstance(headers, dict) and "cookie" not in headers

"""Outbound HTTP: one aiohttp session; ML calls go straight on it, the rest through httpx.

ML calls are the engine's hot path: 5-6 per default-flow execution. Through httpx's
request and response models over aiohttp they cost about twice what aiohttp alone does
(bench: `python -m bench --cases engine`), so `MLCaller` talks to a `Sender`, and
`AiohttpSender` is aiohttp with nothing in between. Webhooks (SNI pinning to a checked
address) and Google's certificates keep httpx's API over the same session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from service.bounds import dump_json

# An answer is kept in the execution document: bound what one call may bring in.
# 10 MiB, a little more than a Pub/Sub message: a result made of one answer can still
# be too large for its channel, and is then delivered without step outputs.
MAX_ANSWER_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """What a function answered: its status, Retry-After header and (bounded) body."""

    status: int
    content: bytes
    retry_after: str | None = None


class NoAnswer(Exception):
    """The call got no usable answer; `retryable` says whether another attempt may help."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable

    @classmethod
    def timed_out(cls, seconds: float) -> NoAnswer:
        return cls(f"timed out after {seconds:.3g} s", retryable=True)

    @classmethod
    def cannot_connect(cls, exc: Exception) -> NoAnswer:
        return cls(f"cannot connect: {exc}", retryable=True)


class Sender(Protocol):
    """Sends one request and reads its answer, raising NoAnswer when there is none."""

    async def send(
        self, method: str, url: str, body: Any, headers: Mapping[str, str], timeout_s: float
    ) -> Answer: ...


def encode_json(body: Any) -> bytes:
    return dump_json(body)


async def read_bounded(chunks: AsyncIterator[bytes], declared: str | None) -> bytes:
    """The body, or NoAnswer once it is (or says it will be) over MAX_ANSWER_BYTES."""
    if declared and declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        raise _too_large()
    content = bytearray()
    async for chunk in chunks:
        content += chunk
        if len(content) > MAX_ANSWER_BYTES:
            raise _too_large()
    return bytes(content)


def _too_large() -> NoAnswer:
    return NoAnswer(f"answer larger than {MAX_ANSWER_BYTES} bytes", retryable=False)


class AiohttpSender:
    """A Sender on an aiohttp session: no redirects, one total timeout per attempt."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def send(
        self, method: str, url: str, body: Any, headers: Mapping[str, str], timeout_s: float
    ) -> Answer:
        data = None
        if method != "GET":
            data = encode_json(body)
            headers = {**headers, "Content-Type": "application/json"}
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                declared = response.headers.get("Content-Length")
                content = await read_bounded(response.content.iter_chunked(65536), declared)
                return Answer(response.status, content, response.headers.get("Retry-After"))
        except TimeoutError:
            raise NoAnswer.timed_out(timeout_s) from None
        except aiohttp.ClientConnectorError as exc:
            raise NoAnswer.cannot_connect(exc) from None
        except aiohttp.ClientConnectionError as exc:
            reason = f"connection lost: {exc or type(exc).__name__}"
            raise NoAnswer(reason, retryable=True) from None
        except aiohttp.ClientError as exc:
            raise NoAnswer(f"{type(exc).__name__}: {exc}", retryable=False) from None


@asynccontextmanager
async def http_clients() -> AsyncIterator[tuple[httpx.AsyncClient, AiohttpSender]]:
    """httpx for webhooks and certificates, a Sender for ML calls, on one session.

    httpx's own pool re-checks every connection on each request (encode/httpx#3215),
    1.3 ms of CPU per call at 10 concurrent calls and 11 ms at 1,000, hence aiohttp under
    it. The connector is unbounded: MLCaller limits calls per host itself
    (ML_MAX_CONCURRENCY_PER_HOST). No cookie jar: one execution's function must not
    set cookies that another execution's calls carry.
    """
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar()
    )
    transport = AiohttpTransport(client=session)
    async with httpx.AsyncClient(transport=transport, follow_redirects=False) as client:
        yield client, AiohttpSender(session)  # closing the client closes the session

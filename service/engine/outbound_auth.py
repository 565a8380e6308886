"""Google tokens for calls: ID tokens for ML functions (Cloud Functions / Cloud Run),
OAuth access tokens for Google APIs (Vertex AI, the operations API).

google-auth finds the identity: the metadata server on Cloud Run, a service
account key (GOOGLE_APPLICATION_CREDENTIALS) locally. Its calls block, so they
run in a worker thread; a token is kept per audience until google-auth deems it
close to expiry, and only one fetch per audience is under way at a time. A fetch
gets FETCH_TIMEOUT_S in all: google-auth's own timeout bounds each read only, so past
it the caller goes on (the step's attempt fails, retryable) and the thread is left
to finish.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import google.auth
import google.auth.transport.requests
import google.oauth2.id_token

FETCH_TIMEOUT_S = 10.0
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


class TokenProvider(Protocol):
    """Headers that authenticate a call to `audience`."""

    async def headers(self, audience: str) -> dict[str, str]: ...


class NoTokens:
    """ML_AUTH=none: calls go out unauthenticated."""

    async def headers(self, audience: str) -> dict[str, str]:
        return {}


class GoogleIdTokens:
    """One cached Google ID token per audience."""

    def __init__(self, timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self._timeout_s = timeout_s
        self._request = google.auth.transport.requests.Request()
        self._credentials: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def headers(self, audience: str) -> dict[str, str]:
        credentials: Any = self._credentials.get(audience)
        if credentials is None or not credentials.valid:
            lock = self._locks.setdefault(audience, asyncio.Lock())
            async with lock:
                credentials = self._credentials.get(audience)
                if credentials is None or not credentials.valid:
                    fetch = asyncio.to_thread(self._fetch, audience, credentials)
                    try:
                        async with asyncio.timeout(self._timeout_s):
                            credentials = await fetch
                    except TimeoutError:
                        raise TimeoutError(f"no answer in {self._timeout_s:g} s") from None
                    self._credentials[audience] = credentials
        return {"Authorization": f"Bearer {credentials.token}"}

    def _fetch(self, audience: str, credentials: Any) -> Any:
        if credentials is None:
            credentials = google.oauth2.id_token.fetch_id_token_credentials(  # type: ignore[no-untyped-call]
                audience, request=self._request
            )
        credentials.refresh(self._request)
        return credentials


class GoogleAccessTokens(GoogleIdTokens):
    """An OAuth access token of the default credentials (cloud-platform scope), whatever
    the audience: the metadata server's on Cloud Run. Cached and fetched as ID tokens are."""

    async def headers(self, audience: str) -> dict[str, str]:
        return await super().headers("")

    def _fetch(self, audience: str, credentials: Any) -> Any:
        if credentials is None:
            credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
        credentials.refresh(self._request)
        return credentials

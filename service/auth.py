"""Authentication of Pub/Sub push requests: a Google-signed OIDC token.

google-auth's `verify_token` checks the signature, `exp`, `iat` and `aud`, but
neither the issuer's allow-list nor `email` / `email_verified`, and it fetches
Google's certificates on every call; here the certificates are cached for as
long as Google's Cache-Control allows and fetched again when a new key appears.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
from google.auth import jwt

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
CLOCK_SKEW_S = 10
MIN_REFETCH_INTERVAL_S = 30.0
_MAX_AGE = re.compile(r"max-age=(\d+)")


class PushRefused(Exception):
    """The push request is not let in: 401/403 for its token, 503 when the certificates
    cannot be fetched (Pub/Sub then pushes again later)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class PushAuth:
    """Verifies `Authorization: Bearer <OIDC token>` of push requests."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        audience: str,
        service_account: str | None,
        certs_url: str = GOOGLE_CERTS_URL,
    ) -> None:
        self._client = client
        self._audience = audience
        self._service_account = service_account
        self._certs_url = certs_url
        self._certs: dict[str, str] = {}
        self._expires = 0.0
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def verify(self, authorization: str | None) -> dict[str, Any]:
        """The token's claims; PushRefused unless every check passes."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise PushRefused(401, "missing bearer token")
        claims = await self._decode(token.strip())
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise PushRefused(401, "token not issued by Google")
        if self._service_account is not None:
            if claims.get("email") != self._service_account:
                raise PushRefused(403, "token of another service account")
            if claims.get("email_verified") is not True:
                raise PushRefused(403, "token email not verified")
        return claims

    async def _decode(self, token: str) -> dict[str, Any]:
        for fresh in (False, True):
            certs = await self._certificates(refresh=fresh)
            try:
                claims: dict[str, Any] = jwt.decode(  # type: ignore[no-untyped-call]
                    token,
                    certs=certs,
                    audience=self._audience,
                    clock_skew_in_seconds=CLOCK_SKEW_S,
                )
                return claims
            except ValueError as exc:  # google-auth reports every failure as ValueError
                if "not found" in str(exc) and not fresh:
                    continue  # an unknown key id: Google may have rotated its keys
                raise PushRefused(401, f"invalid token: {_first_line(exc)}") from None
        raise PushRefused(401, "invalid token: unknown signing key")

    async def _certificates(self, refresh: bool) -> dict[str, str]:
        async with self._lock:
            now = time.monotonic()
            stale = now >= self._expires
            may_refetch = now - self._fetched >= MIN_REFETCH_INTERVAL_S
            if stale or (refresh and may_refetch):
                try:
                    response = await self._client.get(self._certs_url, timeout=10)
                    response.raise_for_status()
                    self._certs = response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    if not self._certs:
                        raise PushRefused(503, f"cannot fetch {self._certs_url}: {exc}") from None
                    return self._certs  # keep verifying with the last certificates
                self._fetched = now
                max_age = _MAX_AGE.search(response.headers.get("cache-control", ""))
                self._expires = now + (int(max_age.group(1)) if max_age else 300)
            return self._certs


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__

"""Authentication by Google ID token: Pub/Sub's push requests and the operators.

Both carry `Authorization: Bearer <Google-signed OIDC token>` whose audience is the
service URL: Pub/Sub's for its push identity (PUSH_AUTH_SERVICE_ACCOUNT), an
operator's through `gcloud run services proxy` (ADMIN_EMAILS). google-auth's
`verify_token` checks the signature, `exp`, `iat` and `aud`, but neither the
issuer's allow-list nor `email` / `email_verified`, and it fetches Google's
certificates on every call; here the certificates are cached (one cache for both)
for as long as Google's Cache-Control allows and fetched again when a new key appears.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
from google.auth import jwt

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
CLOCK_SKEW_S = 10
MIN_REFETCH_INTERVAL_S = 30.0
CERTS_TIMEOUT_S = 10.0  # the whole fetch: a trickling answer cannot stretch it
_MAX_AGE = re.compile(r"max-age=(\d+)")


class AuthRefused(Exception):
    """The request is not let in: 401/403 for its token, 503 when the certificates
    cannot be fetched (Pub/Sub then pushes again later)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class GoogleCertificates:
    """Google's token-signing certificates, cached as long as its Cache-Control allows."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        timeout_s: float = CERTS_TIMEOUT_S,
    ) -> None:
        self._client = client
        self._url = url
        self._timeout_s = timeout_s
        self._certs: dict[str, str] = {}
        self._expires = 0.0
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def get(self, refresh: bool) -> dict[str, str]:
        """The certificates by key id; `refresh` asks again (at most every 30 s)."""
        async with self._lock:
            now = time.monotonic()
            stale = now >= self._expires
            may_refetch = now - self._fetched >= MIN_REFETCH_INTERVAL_S
            if stale or (refresh and may_refetch):
                try:
                    async with asyncio.timeout(self._timeout_s):
                        response = await self._client.get(self._url, timeout=self._timeout_s)
                        response.raise_for_status()
                        self._certs = response.json()
                except (httpx.HTTPError, ValueError, TimeoutError) as exc:
                    if not self._certs:
                        reason = str(exc) or f"no answer in {self._timeout_s:g} s"
                        raise AuthRefused(503, f"cannot fetch {self._url}: {reason}") from None
                    # Keep verifying with the last certificates; ask again in a while,
                    # not on every request (each would wait out the fetch's timeout).
                    self._fetched, self._expires = now, now + MIN_REFETCH_INTERVAL_S
                    return self._certs
                self._fetched = now
                max_age = _MAX_AGE.search(response.headers.get("cache-control", ""))
                self._expires = now + (int(max_age.group(1)) if max_age else 300)
            return self._certs


class TokenAuth:
    """Verifies `Authorization: Bearer <Google ID token>`: audience, issuer, and the
    verified `email` among `emails` (any email when `emails` is None)."""

    def __init__(
        self, certificates: GoogleCertificates, audience: str, emails: frozenset[str] | None
    ) -> None:
        self._certificates = certificates
        self._audience = audience
        # Email addresses compare without case (Google may keep an account's capitals).
        self._emails = None if emails is None else frozenset(e.lower() for e in emails)

    async def verify(self, authorization: str | None) -> dict[str, Any]:
        """The token's claims; AuthRefused unless every check passes."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthRefused(401, "missing bearer token")
        claims = await self._decode(token.strip())
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise AuthRefused(401, "token not issued by Google")
        if self._emails is not None:
            if str(claims.get("email", "")).lower() not in self._emails:
                raise AuthRefused(403, "token of another account")
            if claims.get("email_verified") is not True:
                raise AuthRefused(403, "token email not verified")
        return claims

    async def _decode(self, token: str) -> dict[str, Any]:
        for fresh in (False, True):
            certs = await self._certificates.get(refresh=fresh)
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
                raise AuthRefused(401, f"invalid token: {_first_line(exc)}") from None
        raise AuthRefused(401, "invalid token: unknown signing key")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


class OperatorAccess:
    """Who may list, cancel and re-drive executions.

    ADMIN_EMAILS set: a Google ID token of one of them. Not set: open where push
    authentication is off (local development), closed (403 naming the setting)
    where it is on, i.e. in production.
    """

    def __init__(self, auth: TokenAuth | None, closed: bool) -> None:
        self._auth = auth
        self._closed = closed

    async def check(self, authorization: str | None) -> None:
        """AuthRefused unless the request may operate."""
        if self._closed:
            raise AuthRefused(
                403, "ADMIN_EMAILS is not set: operations are closed where push auth is on"
            )
        if self._auth is not None:
            await self._auth.verify(authorization)

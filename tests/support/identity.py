"""A local stand-in for Google's identity: an RSA key, signed ID tokens, certs, a metadata server.

Tokens are signed with google-auth's own signer, so the code under test runs
google-auth's real verification and fetching paths against them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections import Counter
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Request, Response
from google.auth import crypt, jwt

SERVICE_ACCOUNT = "orchestrator@test-project.iam.gserviceaccount.com"


class Identity:
    """One signing key (with its certificate) that mints Google-shaped ID tokens."""

    def __init__(self, key_id: str = "test-key-1") -> None:
        self.key_id = key_id
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.signer = crypt.RSASigner.from_string(pem, key_id)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.certificate = certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def certs(self) -> dict[str, str]:
        return {self.key_id: self.certificate}

    def token(self, audience: str, lifetime_s: int = 3600, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": "https://accounts.google.com",
            "aud": audience,
            "sub": "1234567890",
            "email": SERVICE_ACCOUNT,
            "email_verified": True,
            "iat": now,
            "exp": now + lifetime_s,
            **claims,
        }
        return jwt.encode(self.signer, payload).decode()

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(token, certs=self.certs, audience=audience)
        return claims


ACCESS_TOKEN = "ya29.test-access-token"  # the fake metadata server's, numbered per fetch
STALLING_AUDIENCE = "https://stalls.example"  # the fake metadata server answers it late
STALL_S = 1.5  # under google-auth's 3 s per metadata request: one request, no retries


def metadata_server(identity: Identity, lifetime_s: int = 3600) -> tuple[FastAPI, Counter[str]]:
    """A fake GCE metadata server that answers identity and access-token requests; counts
    fetches per audience (`access_token` for access tokens).

    For STALLING_AUDIENCE it answers after STALL_S, as a metadata server under load might.
    """
    app = FastAPI()
    fetches: Counter[str] = Counter()

    @app.get("/")
    async def root() -> Response:
        return Response("ok", headers={"Metadata-Flavor": "Google"})

    # Each account answers under "default" and under its email, as on GCE.
    @app.get("/computeMetadata/v1/instance/service-accounts/{account}/")
    async def account(account: str) -> Response:
        if account not in ("default", SERVICE_ACCOUNT):
            return Response("no such account", status_code=404)
        info = {"email": SERVICE_ACCOUNT, "aliases": ["default"], "scopes": []}
        return Response(
            json.dumps(info), media_type="application/json", headers={"Metadata-Flavor": "Google"}
        )

    @app.get("/computeMetadata/v1/instance/service-accounts/{account}/token")
    async def access_token(account: str, request: Request) -> Response:
        if account not in ("default", SERVICE_ACCOUNT):
            return Response("no such account", status_code=404)
        if request.headers.get("metadata-flavor") != "Google":
            return Response("missing Metadata-Flavor", status_code=403)
        fetches["access_token"] += 1
        token = {
            "access_token": f"{ACCESS_TOKEN}-{fetches['access_token']}",
            "expires_in": lifetime_s,
            "token_type": "Bearer",
        }
        return Response(
            json.dumps(token), media_type="application/json", headers={"Metadata-Flavor": "Google"}
        )

    @app.get("/computeMetadata/v1/instance/service-accounts/default/identity")
    async def identity_token(request: Request, audience: str) -> Response:
        if request.headers.get("metadata-flavor") != "Google":
            return Response("missing Metadata-Flavor", status_code=403)
        fetches[audience] += 1
        if audience == STALLING_AUDIENCE:
            await asyncio.sleep(STALL_S)
        token = identity.token(audience, lifetime_s=lifetime_s)
        return Response(token, media_type="text/html", headers={"Metadata-Flavor": "Google"})

    return app, fetches


def certs_server(identity: Identity) -> tuple[FastAPI, Counter[str]]:
    """Serves the identity's certificates like Google's v1/certs endpoint; counts fetches."""
    app = FastAPI()
    fetches: Counter[str] = Counter()

    @app.get("/oauth2/v1/certs")
    async def certs() -> Response:
        fetches["certs"] += 1
        return Response(
            json.dumps(identity.certs),
            media_type="application/json",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    return app, fetches

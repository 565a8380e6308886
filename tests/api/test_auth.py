"""Push and operator authentication with locally signed tokens: every forgery is refused."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from service.api.inbound_auth import AuthRefused, GoogleCertificates, TokenAuth
from service.app import create_app
from service.dev.servers import serve
from tests.support.fakes import RecordingTransport
from tests.support.identity import SERVICE_ACCOUNT, Identity, certs_server
from tests.support.project import make_settings, project_flows

AUDIENCE = "https://orchestrator.example/pubsub/push"
FLOWS = project_flows()


@pytest.fixture(scope="module")
def certs(identity: Identity) -> Iterator[tuple[str, Counter[str]]]:
    app, fetches = certs_server(identity)
    with serve(app) as url:
        yield f"{url}/oauth2/v1/certs", fetches


@pytest.fixture
async def auth(certs: tuple[str, Counter[str]]) -> AsyncIterator[TokenAuth]:
    async with httpx.AsyncClient() as client:
        yield TokenAuth(
            GoogleCertificates(client, certs[0]), AUDIENCE, frozenset({SERVICE_ACCOUNT})
        )


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forgeries(identity: Identity) -> dict[str, tuple[str | None, int]]:
    """Each forged or unfit Authorization header, with the status it must get."""
    good = identity.token(AUDIENCE)
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return {
        "missing": (None, 401),
        "not bearer": (f"Basic {good}", 401),
        "garbage": ("Bearer not-a-jwt", 401),
        "expired": (f"Bearer {identity.token(AUDIENCE, lifetime_s=-120)}", 401),
        "wrong audience": (f"Bearer {identity.token('https://elsewhere.example')}", 401),
        "wrong issuer": (f"Bearer {identity.token(AUDIENCE, iss='https://evil.example')}", 401),
        "wrong email": (f"Bearer {identity.token(AUDIENCE, email='x@evil.example')}", 403),
        "unverified email": (f"Bearer {identity.token(AUDIENCE, email_verified=False)}", 403),
        "alg none": (f"Bearer {b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.", 401),
        "unknown key": (f"Bearer {Identity('other-key').token(AUDIENCE)}", 401),
        "other key, same kid": (f"Bearer {Identity(identity.key_id).token(AUDIENCE)}", 401),
        "tampered payload": (
            f"Bearer {header}.{b64({**claims, 'email': 'x@evil.example'})}.{signature}",
            401,
        ),
    }


async def test_a_valid_token_is_accepted(auth: TokenAuth, identity: Identity) -> None:
    claims = await auth.verify(f"Bearer {identity.token(AUDIENCE)}")
    assert claims["email"] == SERVICE_ACCOUNT


async def test_every_forged_token_is_refused(auth: TokenAuth, identity: Identity) -> None:
    accepted = []
    cases = forgeries(identity)
    for case, (header, status) in cases.items():
        try:
            await auth.verify(header)
            accepted.append(case)
        except AuthRefused as exc:
            assert exc.status == status, case
    print(f"\nforged or unfit push tokens accepted: {len(accepted)}/{len(cases)}")
    assert accepted == []


async def test_certificates_are_fetched_once_for_many_tokens(
    auth: TokenAuth, identity: Identity, certs: tuple[str, Counter[str]]
) -> None:
    before = certs[1]["certs"]
    for _ in range(20):
        await auth.verify(f"Bearer {identity.token(AUDIENCE)}")
    assert certs[1]["certs"] - before == 1


async def test_unknown_keys_do_not_make_every_request_fetch_certificates(
    auth: TokenAuth, identity: Identity, certs: tuple[str, Counter[str]]
) -> None:
    """A key id not in the cache refetches, but at most once per MIN_REFETCH_INTERVAL_S."""
    await auth.verify(f"Bearer {identity.token(AUDIENCE)}")
    before = certs[1]["certs"]
    stranger = Identity("rotated-key").token(AUDIENCE)
    for _ in range(5):
        with pytest.raises(AuthRefused):
            await auth.verify(f"Bearer {stranger}")
    assert certs[1]["certs"] - before == 0


@pytest.mark.parametrize("path", ["/pubsub/push", "/pubsub/events/ml-orchestration/landed"])
def test_the_push_endpoints_require_a_token_when_configured(
    identity: Identity, certs: tuple[str, Counter[str]], path: str
) -> None:
    """The requests' and the triggers' (here of a trigger no flow declares: acked)."""
    settings = make_settings(
        push_auth_audience=AUDIENCE,
        push_auth_service_account=SERVICE_ACCOUNT,
        push_auth_certs_url=certs[0],
    )
    transport = RecordingTransport()
    envelope = {"message": {"data": base64.b64encode(b"not json").decode(), "messageId": "1"}}
    with serve(create_app(settings, FLOWS, transport)) as url, httpx.Client(base_url=url) as client:
        assert client.post(path, json=envelope).status_code == 401
        forged = {"authorization": forgeries(identity)["wrong email"][0] or ""}
        assert client.post(path, json=envelope, headers=forged).status_code == 403
        assert transport.published == []
        valid = {"authorization": f"Bearer {identity.token(AUDIENCE)}"}
        assert client.post(path, json=envelope, headers=valid).status_code == 204


async def test_unreachable_certificates_are_a_retryable_503() -> None:
    async with httpx.AsyncClient() as client:
        certificates = GoogleCertificates(client, "http://127.0.0.1:9/certs")
        auth = TokenAuth(certificates, AUDIENCE, frozenset({SERVICE_ACCOUNT}))
        with pytest.raises(AuthRefused) as caught:
            await auth.verify(f"Bearer {Identity().token(AUDIENCE)}")
    assert caught.value.status == 503
    assert "cannot fetch http://127.0.0.1:9/certs" in str(caught.value)

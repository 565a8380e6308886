"""Webhook targets: private, loopback and link-local destinations are refused."""

from __future__ import annotations

import pytest

from service.errors import WebhookTargetRefused
from service.targets import WebhookTargets

HOSTILE = [
    "http://127.0.0.1/hook",
    "http://localhost:8080/hook",
    "http://127.1/hook",
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://0177.0.0.1/hook",
    "http://0.0.0.0/hook",
    "http://10.0.0.8/hook",
    "http://172.16.3.4/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/computeMetadata/v1/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://100.64.0.1/hook",
    "http://192.0.0.1/hook",
    "http://[::1]/hook",
    "http://[fd00::1]/hook",
    "http://[fe80::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:169.254.169.254]/hook",
    "http://224.0.0.1/hook",
    "ftp://8.8.8.8/hook",
    "file:///etc/passwd",
    "gopher://8.8.8.8/",
    "https://user:pass@8.8.8.8/hook",
    "https:///no-host",
    "http://8.8.8.8:99999/hook",
    "https://" + "a" * 2100 + ".example/",
]


@pytest.mark.parametrize("url", HOSTILE)
async def test_hostile_targets_are_refused(url: str) -> None:
    with pytest.raises(WebhookTargetRefused):
        await WebhookTargets().check(url)


@pytest.mark.parametrize("url", ["https://8.8.8.8/hook", "http://[2001:4860:4860::8888]:8443/h"])
async def test_public_addresses_are_allowed(url: str) -> None:
    await WebhookTargets().check(url)


async def test_private_networks_can_be_allowed_for_local_development() -> None:
    await WebhookTargets(allow_private_networks=True).check("http://127.0.0.1:8081/webhook")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "http://u:p@127.0.0.1/"])
async def test_scheme_and_credentials_are_checked_even_when_private_is_allowed(url: str) -> None:
    with pytest.raises(WebhookTargetRefused):
        await WebhookTargets(allow_private_networks=True).check(url)

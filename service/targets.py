"""Which webhook URLs the orchestrator may send results to.

Webhook URLs come from clients, so a URL could aim the service at its own
network (the metadata server, internal services). A target must be http(s),
carry no credentials, and every address its host resolves to must be public,
unless WEBHOOK_ALLOW_PRIVATE_NETWORKS is set (local development).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from service.errors import WebhookTargetRefused

RESOLVE_TIMEOUT_S = 5.0
MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookTargets:
    """Checks webhook URLs at the front door and again before each delivery."""

    def __init__(self, allow_private_networks: bool = False) -> None:
        self._allow_private = allow_private_networks

    async def check(self, url: str) -> None:
        """Raise WebhookTargetRefused with the reason unless `url` may receive results."""
        if len(url) > MAX_URL_LENGTH:
            raise WebhookTargetRefused(f"longer than {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise WebhookTargetRefused(f"not a valid URL: {exc}") from None
        if parts.scheme not in {"http", "https"}:
            raise WebhookTargetRefused("scheme must be http or https")
        if not parts.hostname:
            raise WebhookTargetRefused("has no host")
        if parts.username is not None or parts.password is not None:
            raise WebhookTargetRefused("must not carry credentials")
        if self._allow_private:
            return
        for address in await _resolve(parts.hostname, port):
            if not is_public(address):
                raise WebhookTargetRefused(
                    f"host {parts.hostname} is on a private network ({address}); "
                    "set WEBHOOK_ALLOW_PRIVATE_NETWORKS=true for local development only"
                )


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address (IPv4-mapped IPv6 judged by its IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def _resolve(host: str, port: int | None) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise WebhookTargetRefused(f"host {host} does not resolve: {exc}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]

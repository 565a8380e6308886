"""Which webhook URLs the orchestrator may send results to, and where it connects for them.

Webhook URLs come from clients, so a URL could aim the service at its own
network (the metadata server, internal services). A target must be http(s),
carry no credentials, name a host in WEBHOOK_ALLOWED_HOSTS when that is set,
and every address its host resolves to must be public. The delivery then
connects to the address that was checked (the URL is pinned to it, with the
original Host header and TLS server name), so a second DNS answer cannot
swap in a private address. WEBHOOK_ALLOW_PRIVATE_NETWORKS lifts the address
rules for local development.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from service.errors import WebhookTargetRefused

RESOLVE_TIMEOUT_S = 5.0
MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send a webhook: the URL to connect to and what to tell the server."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, str] = field(default_factory=dict)


class WebhookTargets:
    """Checks webhook URLs at the front door and again before each delivery."""

    def __init__(
        self,
        allow_private_networks: bool = False,
        allowed_hosts: frozenset[str] | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._allow_private = allow_private_networks
        self._allowed_hosts = allowed_hosts
        self._resolve = resolver or _resolve

    async def check(self, url: str) -> None:
        """Raise WebhookTargetRefused with the reason unless `url` may receive results."""
        await self.pin(url)

    async def pin(self, url: str) -> Target:
        """The checked target of `url`, its host replaced by an address that passed."""
        parts, port = _parse(url)
        host = parts.hostname
        assert host is not None
        if self._allowed_hosts is not None and host not in self._allowed_hosts:
            raise WebhookTargetRefused(f"host {host} is not in WEBHOOK_ALLOWED_HOSTS")
        if self._allow_private:
            return Target(url)
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                found = await self._resolve(host, port)
        except (OSError, TimeoutError, UnicodeError) as exc:  # UnicodeError: not a DNS name
            raise WebhookTargetRefused(f"host {host} does not resolve: {exc}") from None
        addresses = [ipaddress.ip_address(text.split("%")[0]) for text in found]
        if not addresses:
            raise WebhookTargetRefused(f"host {host} does not resolve")
        for address in addresses:
            if not is_public(address):
                raise WebhookTargetRefused(
                    f"host {host} is on a private network ({address}); "
                    "set WEBHOOK_ALLOW_PRIVATE_NETWORKS=true for local development only"
                )
        pinned = f"[{addresses[0]}]" if addresses[0].version == 6 else str(addresses[0])
        netloc = pinned if parts.port is None else f"{pinned}:{parts.port}"
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        return Target(parts._replace(netloc=netloc).geturl(), {"host": parts.netloc}, extensions)


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address (IPv4-mapped IPv6 judged by its IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _parse(url: str) -> tuple[SplitResult, int]:
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
    return parts, port or (443 if parts.scheme == "https" else 80)


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]

"""Small fakes of the service's own ports, for unit tests."""

from __future__ import annotations

import json
from typing import Any

from service.errors import BrokerUnavailable
from service.transport import Deliver


class RecordingTransport:
    """A Transport that keeps what is published; `down` makes the broker unreachable."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.down = False

    async def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        if self.down:
            raise BrokerUnavailable(f"cannot publish to {topic}: broker down")
        self.published.append((topic, data, attributes))
        return str(len(self.published))

    async def check(self, topic: str) -> None:
        if self.down:
            raise BrokerUnavailable(f"topic {topic}: broker down")

    def subscribe(self, topic: str, deliver: Deliver) -> None:
        return None

    async def close(self) -> None:
        return None

    def on(self, topic: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
        return [(json.loads(data), attrs) for name, data, attrs in self.published if name == topic]

"""Small fakes of the service's own ports, for unit tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from service.backends.memory import MemoryStore
from service.backends.store import Claim
from service.backends.transport import Deliver
from service.errors import BrokerUnavailable
from service.execution import Execution, StepResult


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


class FaultyStore(MemoryStore):
    """A MemoryStore whose writes raise what `save_step_fault` / `save_fault` return.

    Like a real store, and unlike MemoryStore, it hands out copies: a write that
    failed leaves no trace in what a later claim reads.
    """

    def __init__(self) -> None:
        super().__init__()
        self.save_step_fault: Callable[[str, StepResult], Exception | None] = lambda *_: None
        self.save_fault: Callable[[Execution], Exception | None] = lambda _: None

    async def claim(self, execution: Execution, owner: str, lease_s: float) -> Claim:
        claim = await super().claim(execution.model_copy(deep=True), owner, lease_s)
        if claim.execution is None:
            return claim
        return replace(claim, execution=claim.execution.model_copy(deep=True))

    async def save_steps(self, execution_id: str, results: Mapping[str, StepResult]) -> None:
        for name, result in results.items():
            if (error := self.save_step_fault(name, result)) is not None:
                raise error
        copies = {name: result.model_copy(deep=True) for name, result in results.items()}
        await super().save_steps(execution_id, copies)

    async def save(self, execution: Execution, delivered: bool = False) -> None:
        if (error := self.save_fault(execution)) is not None:
            raise error
        await super().save(execution.model_copy(deep=True), delivered)

"""Where executions are recorded, so that a redelivered message never runs twice.

`claim` is the one decision point for a delivery: run it, ignore it (finished),
or send it back (running elsewhere). The in-memory store serves one instance;
a shared store (Firestore) takes the same interface for several.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from service.messages import TERMINAL, Execution

DEFAULT_CAPACITY = 10_000


class ClaimState(StrEnum):
    CLAIMED = "claimed"  # this delivery runs the execution
    RUNNING = "running"  # another delivery runs it now
    FINISHED = "finished"  # it ended; see `delivered`


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    execution: Execution | None = None
    delivered: bool = False


class ExecutionStore(Protocol):
    """Execution documents by id, with claims so one delivery runs each execution."""

    async def claim(self, execution: Execution) -> Claim:
        """Record `execution` as running unless it is running or finished already."""

    async def save(self, execution: Execution, delivered: bool = False) -> None:
        """Store the document (finished or not) and whether its result was delivered."""

    async def release(self, execution_id: str) -> None:
        """Give up a claim of an unfinished execution, so a redelivery runs it."""

    async def get(self, execution_id: str) -> Execution | None: ...


class MemoryStore:
    """Executions of this instance, the oldest finished ones forgotten past `capacity`."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, tuple[Execution, bool]] = OrderedDict()
        self._lock = asyncio.Lock()

    async def claim(self, execution: Execution) -> Claim:
        async with self._lock:
            entry = self._entries.get(execution.execution_id)
            if entry is not None:
                known, delivered = entry
                if known.status in TERMINAL:
                    return Claim(ClaimState.FINISHED, known.model_copy(deep=True), delivered)
                return Claim(ClaimState.RUNNING, known.model_copy(deep=True))
            self._put(execution, delivered=False)
            return Claim(ClaimState.CLAIMED, execution)

    async def save(self, execution: Execution, delivered: bool = False) -> None:
        async with self._lock:
            self._put(execution.model_copy(deep=True), delivered)

    async def release(self, execution_id: str) -> None:
        async with self._lock:
            entry = self._entries.get(execution_id)
            if entry is not None and entry[0].status not in TERMINAL:
                del self._entries[execution_id]

    async def get(self, execution_id: str) -> Execution | None:
        entry = self._entries.get(execution_id)
        return entry[0].model_copy(deep=True) if entry else None

    def _put(self, execution: Execution, delivered: bool) -> None:
        self._entries[execution.execution_id] = (execution, delivered)
        self._entries.move_to_end(execution.execution_id)
        while len(self._entries) > self._capacity:
            oldest = next(iter(self._entries))
            if self._entries[oldest][0].status not in TERMINAL:
                break  # never forget a running execution
            del self._entries[oldest]

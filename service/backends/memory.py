"""The execution store of one instance, in memory: the ExecutionStore contract
(service/backends/store.py) without a database, for a laptop, the tests and the
embedded transport."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.backends.answers import Answer, AnswerRule, callback_rule, child_resumes, child_rule
from service.backends.listing import ExecutionQuery, Page, page_key, page_token, sort_key
from service.backends.store import (
    FLAGGED,
    Claim,
    ClaimState,
    cancel_wins,
    cancelled,
    claimed,
    due_again,
    kept_shadows,
    may_redrive,
    suspended,
)
from service.callback_tokens import CallbackToken
from service.execution import (
    TERMINAL,
    UNDERWAY,
    CachedOutput,
    Execution,
    ExecutionStatus,
    FlowVersion,
    ParentRef,
    ShadowResult,
    StepResult,
    now,
)
from service.shares import Ask, Holder, Share, allot

DEFAULT_CAPACITY = 10_000
# Never forgotten: running (leased) and waiting executions.
FORGETTABLE = TERMINAL | {ExecutionStatus.QUEUED}


@dataclass(slots=True)
class _Entry:
    execution: Execution
    delivered: bool = False
    owner: str | None = None
    lease_until: float = 0.0
    cancel_requested: bool = False
    shadows: dict[str, ShadowResult] = field(default_factory=dict)


class MemoryStore:
    """Executions of this instance; past `capacity` the oldest ended or queued are forgotten.

    It keeps the very objects it is given (the running execution included, so
    GET /executions shows its progress) and copies only what it hands out to
    readers: copying on every step was a fifth of the engine's CPU (bench/).
    """

    write_window_s = 0.0  # a write costs nothing: outcomes of one loop turn share it

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._flows: dict[tuple[str, str], str] = {}
        self._cache: OrderedDict[str, CachedOutput] = OrderedDict()
        self._shares: dict[str, dict[str, Holder]] = {}
        self._lock = asyncio.Lock()

    async def enqueue(self, execution: Execution) -> bool:
        async with self._lock:
            if execution.execution_id in self._entries:
                return False
            self._put(execution.execution_id, _Entry(execution))
            return True

    async def unqueue(self, execution_id: str) -> None:
        async with self._lock:
            entry = self._entries.get(execution_id)
            if entry is not None and entry.execution.status == ExecutionStatus.QUEUED:
                del self._entries[execution_id]

    async def claim(self, execution: Execution, owner: str, lease_s: float) -> Claim:
        now = time.monotonic()
        async with self._lock:
            entry = self._entries.get(execution.execution_id)
            if entry is None:
                entry = _Entry(execution)
                self._put(execution.execution_id, entry)
            elif entry.delivered:
                return Claim(ClaimState.FINISHED, entry.execution, True)
            elif entry.lease_until > now:
                return Claim(ClaimState.RUNNING)
            entry.owner, entry.lease_until = owner, now + lease_s
            return claimed(entry.execution, entry.cancel_requested, execution)

    async def renew(self, execution_id: str, owner: str, lease_s: float) -> bool:
        async with self._lock:
            entry = self._entries.get(execution_id)
            if entry is None or entry.owner != owner:
                return False
            entry.lease_until = time.monotonic() + lease_s
            return True

    async def save_steps(self, execution_id: str, results: Mapping[str, StepResult]) -> None:
        async with self._lock:
            entry = self._entries.get(execution_id)
            if entry is not None:
                entry.execution.steps.update(results)

    async def save(self, execution: Execution, delivered: bool = False) -> None:
        async with self._lock:
            entry = self._entries.get(execution.execution_id) or _Entry(execution)
            cancel_wins(execution, entry.cancel_requested)
            entry.execution = execution
            entry.delivered = delivered
            if delivered:
                entry.owner, entry.lease_until = None, 0.0
            self._put(execution.execution_id, entry)

    async def release(self, execution_id: str, owner: str) -> None:
        async with self._lock:
            entry = self._entries.get(execution_id)
            if entry is not None and entry.owner == owner:
                entry.owner, entry.lease_until = None, 0.0

    async def get(self, execution_id: str) -> Execution | None:
        entry = self._entries.get(execution_id)
        if entry is None:
            return None
        return entry.execution.model_copy(deep=True).shadowed(entry.shadows)

    async def record_shadows(self, execution_id: str, shadows: Mapping[str, ShadowResult]) -> None:
        async with self._lock:
            entry = self._entries.get(execution_id)
            if entry is not None:
                entry.shadows.update(shadows)

    async def list(self, query: ExecutionQuery) -> Page:
        after = page_key(query.page_token) if query.page_token else None
        found = [
            entry.execution
            for entry in self._entries.values()
            if query.matches(entry.execution)
            and (after is None or sort_key(entry.execution) < after)
        ]
        found.sort(key=sort_key, reverse=True)
        page = [execution.summary() for execution in found[: query.limit]]
        more = len(found) > query.limit
        return Page(page, page_token(page[-1]) if more else None)

    async def cancel(self, execution_id: str) -> ExecutionStatus | None:
        async with self._lock:
            entry = self._entries.get(execution_id)
            if entry is None:
                return None
            status = cancelled(entry.execution)
            entry.cancel_requested = status in FLAGGED
            if status == ExecutionStatus.WAITING:  # the caller sends its resume, which ends it
                entry.execution.wake_at = due_again()
            return status

    async def cancel_requests(self) -> set[str]:
        return {
            execution_id
            for execution_id, entry in self._entries.items()
            if entry.cancel_requested and entry.execution.status == ExecutionStatus.RUNNING
        }

    async def redrive(
        self, execution_id: str, moved_to: FlowVersion | None = None
    ) -> tuple[Execution, Execution] | None:
        async with self._lock:
            entry = self._entries.get(execution_id)
            if entry is None:
                return None
            before = entry.execution
            may_redrive(before, entry.delivered)
            after = before.redriven(moved_to)
            self._entries[execution_id] = _Entry(after, shadows=kept_shadows(after, entry.shadows))
            return before, after

    async def suspend(self, execution: Execution) -> bool:
        async with self._lock:
            entry = self._entries.get(execution.execution_id) or _Entry(execution)
            stored = entry.execution.callbacks
            answered = stored.keys() | execution.callbacks.keys()
            resume = suspended(execution, answered, entry.cancel_requested)
            execution.callbacks = {**stored, **execution.callbacks}
            entry.execution, entry.delivered = execution, False
            entry.owner, entry.lease_until = None, 0.0
            self._put(execution.execution_id, entry)
            return resume

    async def due(self, limit: int) -> builtins.list[Execution]:
        moment = now()
        woken: builtins.list[Execution] = []
        async with self._lock:
            for entry in self._entries.values():
                execution = entry.execution
                if len(woken) == limit:
                    break
                if execution.status != ExecutionStatus.WAITING or entry.lease_until:
                    continue
                if execution.wake_at is not None and execution.wake_at <= moment:
                    execution.wake_at = due_again()
                    woken.append(execution.model_copy())
        return woken

    async def answer(self, token: CallbackToken, body: Any) -> tuple[Answer, Execution | None]:
        rule = callback_rule(token)
        async with self._lock:
            verdict, execution = self._answered(token.execution_id, token.step, body, rule)
            return verdict, None if execution is None else execution.model_copy()

    async def child_ended(
        self, parent: ParentRef, child: str, end: Any
    ) -> tuple[Answer, Execution | None]:
        rule = child_rule(parent, child)
        async with self._lock:
            verdict, execution = self._answered(parent.execution_id, parent.answer_key, end, rule)
            if verdict != Answer.ACCEPTED or execution is None:
                return verdict, None
            ends = sum(1 for key in execution.callbacks if key.startswith(f"{parent.step}#"))
            resumes = child_resumes(execution, parent, ends)
            return verdict, execution.model_copy() if resumes else None

    def _answered(
        self, execution_id: str, key: str, body: Any, rule: AnswerRule
    ) -> tuple[Answer, Execution | None]:
        """Record `body` at `key` if `rule` accepts (the lock held); with the execution."""
        entry = self._entries.get(execution_id)
        if entry is None:
            return Answer.UNKNOWN, None
        execution = entry.execution
        verdict = rule(execution, entry.cancel_requested)
        if verdict == Answer.ACCEPTED:
            execution.callbacks[key] = body
            if execution.status == ExecutionStatus.WAITING:
                execution.wake_at = due_again()
        return verdict, execution

    async def keep_flow(self, name: str, version: str, source: str) -> None:
        self._flows.setdefault((name, version), source)

    async def flow_source(self, name: str, version: str) -> str | None:
        return self._flows.get((name, version))

    async def versions_in_use(self, name: str) -> dict[str, int]:
        counted = Counter(
            entry.execution.flow_version or "unknown"
            for entry in self._entries.values()
            if entry.execution.flow == name and entry.execution.status in UNDERWAY
        )
        return dict(counted)

    async def lease_share(self, key: str, instance: str, ask: Ask, lease_s: float) -> Share:
        async with self._lock:
            holders = self._shares.setdefault(key, {})
            others = {name: holder for name, holder in holders.items() if name != instance}
            moment = time.time()
            granted = allot(ask.total, others, ask.demand, ask.in_use, moment)
            holders.clear()
            holders.update({n: h for n, h in others.items() if h.expires_at > moment})
            if granted != Share() or not ask.lets_go:
                holders[instance] = Holder(ask.demand, ask.kept(granted), moment + lease_s)
            return granted

    async def cached(self, key: str) -> CachedOutput | None:
        entry = self._cache.get(key)
        if entry is None or entry.expires_at <= now():
            return None
        self._cache.move_to_end(key)
        return entry

    async def cache(self, key: str, entry: CachedOutput) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)  # the least recently used

    async def close(self) -> None:
        return None

    def _put(self, execution_id: str, entry: _Entry) -> None:
        self._entries[execution_id] = entry
        self._entries.move_to_end(execution_id)
        if len(self._entries) <= self._capacity:
            return
        # Forget the oldest ended or still queued execution (its message is with the
        # broker; its delivery records it again); never a running one.
        for oldest_id, oldest in self._entries.items():
            if oldest.execution.status in FORGETTABLE:
                del self._entries[oldest_id]
                return

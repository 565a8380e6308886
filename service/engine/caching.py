"""The step cache: a call step with `cache: {key, ttl}` reuses a fresh answer.

An answer is kept under a digest of (flow, step, the key's value) in the store, so
every instance reuses it, until its ttl ends; `output:` still shapes it per use (`shape`).
A hit records where the answer came from (the execution whose call made it). Misses of
one key that overlap in one instance make one call: the others wait for it and shape
its answer (or take its error). Failed calls are not kept, nor an answer that the step's
`output:` could not shape (that failed the step: kept, it would fail every execution of
the key for the ttl without a call). A store that cannot answer costs the cache, never
the step: the call is made.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, Protocol

import structlog

from service.engine.calls import CallResult
from service.engine.expressions import EvaluationError
from service.engine.step import Step
from service.errors import OrchestratorError
from service.execution import CachedOutput, now
from service.metrics import Metrics

log = structlog.get_logger(__name__)


class AnswerStore(Protocol):
    """Where answers are kept for every instance (the execution store does it)."""

    async def cached(self, key: str) -> CachedOutput | None:
        """The output kept under `key` (a digest), unless there is none or it expired."""

    async def cache(self, key: str, entry: CachedOutput) -> None:
        """Keep `entry` under `key` until its `expires_at`."""


class StepCache:
    """Answers of cached steps, shared through the store."""

    def __init__(self, store: AnswerStore, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._calls: dict[str, asyncio.Future[CallResult]] = {}  # misses under way, by key

    async def through(
        self,
        flow: str,
        step: Step,
        scope: dict[str, Any],
        execution_id: str,
        call: Callable[[], Awaitable[CallResult]],
        shape: Callable[[CallResult], CallResult],
        variant: str | None = None,
    ) -> CallResult:
        """The step's answer for `scope`, shaped by `shape`: kept, joined, or `call()`ed
        (and kept if `shape` took it); of a step with variants, `variant`'s own."""
        assert step.cache is not None
        try:
            value = step.cache.key.render(scope)
        except EvaluationError as exc:
            return CallResult(None, str(exc), 0)
        key = _digest(flow, step.name if variant is None else f"{step.name}@{variant}", value)
        labels = {"flow": flow, "step": step.name}
        kept = await self._kept(key)
        if kept is not None:
            self._metrics.cache.add(1, labels | {"outcome": "hit"})
            return shape(CallResult(kept.output, None, 0, cached_from=kept.made_by))
        under_way = self._calls.get(key)
        if under_way is not None:
            await asyncio.wait({under_way})
            if not under_way.cancelled():
                self._metrics.cache.add(1, labels | {"outcome": "joined"})
                return shape(under_way.result())
        self._metrics.cache.add(1, labels | {"outcome": "miss"})
        return await self._call(key, step.cache.ttl_s, execution_id, call, shape)

    async def _call(
        self,
        key: str,
        ttl_s: float,
        execution_id: str,
        call: Callable[[], Awaitable[CallResult]],
        shape: Callable[[CallResult], CallResult],
    ) -> CallResult:
        answer = asyncio.get_running_loop().create_future()
        self._calls[key] = answer
        try:
            result = await call()
            shaped = shape(result)
            if shaped.error is None:
                expires_at = now() + timedelta(seconds=ttl_s)
                await self._keep(key, CachedOutput(result.output, execution_id, expires_at))
            joined = replace(result, attempts=0, cached_from=execution_id)
            answer.set_result(joined if result.error is None else result)
            return shaped
        finally:
            if not answer.done():
                answer.cancel()  # the ones waiting make their own call
            del self._calls[key]

    async def _kept(self, key: str) -> CachedOutput | None:
        try:
            return await self._store.cached(key)
        except OrchestratorError as exc:
            log.warning("cache not read; calling", reason=str(exc))
            return None

    async def _keep(self, key: str, entry: CachedOutput) -> None:
        try:
            await self._store.cache(key, entry)
        except OrchestratorError as exc:
            log.warning("answer not cached", reason=str(exc))


def _digest(flow: str, step: str, value: Any) -> str:
    named = json.dumps([flow, step, value], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(named.encode()).hexdigest()

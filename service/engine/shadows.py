"""Shadow calls: a candidate model gets a copy of a step's call, and its answer is kept
beside the one that was used, compared, never used.

A step with `shadow:` sends, for the sampled executions (by a hash of the execution id:
one execution is always in or out), the same method and body to the candidate at the
same time as its own call (`start`). The candidate's calls have their own host limit,
retry budget and token audience (service/engine/calls.py); its failure fails nothing,
and nothing waits for it: the step ends when its own call does. Its outcome is judged
once both have answered (`compare:`, CEL over `response` and `shadow`, else equal JSON:
service/differences.py) and counted, `orchestrator_shadow_total{flow, step, outcome}`:
agree, disagree, error (the candidate failed, or `compare` did), primary_failed
(nothing to compare with).

The outcomes of an execution's shadows are held here by execution until the run that
started them is over (delivered or suspended): `recorded` then waits for those still
out, each at most its `timeout_s` after it started (or until the instance stops:
`stop`), and hands them to the store, which
keeps them beside the steps (as callbacks' answers are) so that no later write of the
run overwrites them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import structlog

from service.differences import differences
from service.engine.calls import CallResult, MLCaller
from service.engine.expressions import EvaluationError
from service.engine.step import Step, bucket
from service.errors import OrchestratorError
from service.execution import ShadowResult, StepStatus
from service.metrics import Metrics

log = structlog.get_logger(__name__)


class ShadowStore(Protocol):
    """Where shadows' outcomes are kept (the execution store)."""

    async def record_shadows(self, execution_id: str, shadows: Mapping[str, ShadowResult]) -> None:
        """Keep `shadows` (by step, or `step#index`) with the execution, over any of before."""
        ...


class Shadowed:
    """A shadow call under way: told of the primary's outcome by `answered`."""

    def __init__(self, labels: dict[str, str], metrics: Metrics) -> None:
        self.primary: asyncio.Future[CallResult | None] = asyncio.get_running_loop().create_future()
        self.labels = labels
        self._metrics = metrics
        self._started = time.perf_counter()

    def answered(self, call: CallResult | None) -> None:
        """The primary's outcome (None: it did not end, cancelled)."""
        if self.primary.done():
            return
        self.primary.set_result(call)
        seconds = time.perf_counter() - self._started
        self._metrics.shadow_duration.record(seconds, self.labels | {"side": "primary"})


class Shadows:
    """The shadow calls of this instance's runs, held by execution until recorded."""

    def __init__(self, caller: MLCaller, metrics: Metrics) -> None:
        self._caller = caller
        self._metrics = metrics
        self._out: dict[str, dict[str, asyncio.Task[ShadowResult]]] = {}
        self._running: set[asyncio.Task[ShadowResult]] = set()  # held, or being settled

    def start(
        self, step: Step, flow: str, execution_id: str, key: str, body: Any, scope: dict[str, Any]
    ) -> Shadowed | None:
        """Send the copy of the call with `body` (`key`: the step, or `step#index`) if the
        execution is sampled; what to tell the primary's outcome, or None."""
        shadow = step.shadow
        if shadow is None or bucket(f"shadow:{execution_id}") >= shadow.share * 100:
            return None
        handle = Shadowed({"flow": flow, "step": step.name}, self._metrics)
        calls = self._out.setdefault(execution_id, {})
        earlier = calls.pop(key, None)
        if earlier is not None:  # the same call made again in this run: its shadow too
            earlier.cancel()
        task = calls[key] = asyncio.create_task(self._shadowed(step, body, scope, handle))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return handle

    @asynccontextmanager
    async def recorded(self, execution_id: str, store: ShadowStore) -> AsyncIterator[None]:
        """Around a run of the execution: afterwards, its shadows' outcomes are stored
        (each waited for within its timeout); if the run raised, they are dropped."""
        try:
            yield
        except BaseException:
            self.drop(execution_id)
            raise
        shadows = await self.settled(execution_id)
        if not shadows:
            return
        try:
            await store.record_shadows(execution_id, shadows)
        except OrchestratorError as exc:
            log.warning("shadow outcomes not stored", reason=str(exc), shadows=sorted(shadows))

    async def settled(self, execution_id: str) -> dict[str, ShadowResult]:
        """The outcomes of the execution's shadows, waited for (each within its timeout)."""
        calls = self._out.pop(execution_id, {})
        if not calls:
            return {}
        ended = await asyncio.gather(*calls.values(), return_exceptions=True)
        outcomes = {}
        for key, outcome in zip(calls, ended, strict=True):
            if isinstance(outcome, ShadowResult):
                outcomes[key] = outcome
            elif not isinstance(outcome, asyncio.CancelledError):
                log.error("shadow call broke", shadow=key, reason=repr(outcome))
        return outcomes

    def stop(self) -> None:
        """The instance is stopping: no shadow is waited for any more (those that answered
        are still recorded)."""
        for task in list(self._running):
            task.cancel()

    def drop(self, execution_id: str) -> None:
        """Abandon the execution's shadows: its run did not end here."""
        for task in self._out.pop(execution_id, {}).values():
            task.cancel()

    async def _shadowed(
        self, step: Step, body: Any, scope: dict[str, Any], handle: Shadowed
    ) -> ShadowResult:
        assert step.shadow is not None
        timeout = step.shadow.timeout_s
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                deadline = asyncio.get_running_loop().time() + timeout
                call = await self._caller.shadow(step, body, deadline)
        except TimeoutError:
            call = CallResult(None, f"no answer within {timeout:g} s (shadow.timeout_s)", 1)
        seconds = time.perf_counter() - started
        labels = handle.labels
        self._metrics.shadow_duration.record(seconds, labels | {"side": "shadow"})
        outcome, result = _judged(step, scope, call, await handle.primary)
        result.duration_ms = round(seconds * 1000)
        self._metrics.shadows.add(1, labels | {"outcome": outcome})
        return result


def _judged(
    step: Step, scope: dict[str, Any], call: CallResult, primary: CallResult | None
) -> tuple[str, ShadowResult]:
    """The outcome's label, and what is recorded of the shadow's answer."""
    assert step.shadow is not None
    if call.error is not None:
        return "error", ShadowResult(status=StepStatus.FAILED, error=call.error)
    result = ShadowResult(status=StepStatus.SUCCEEDED, output=call.output)
    if primary is None or primary.error is not None:
        return "primary_failed", result
    found = differences(primary.output, call.output)
    result.differences = found.pointers
    compare = step.shadow.compare
    if compare is None:
        result.agree = found.equal
    else:
        try:
            agree = compare.render({**scope, "response": primary.output, "shadow": call.output})
        except EvaluationError as exc:
            result.error = f"compare: {exc}"
            return "error", result
        if not isinstance(agree, bool):
            result.error = f"compare: gives {type(agree).__name__}, not a bool"
            return "error", result
        result.agree = agree
    return ("agree" if result.agree else "disagree"), result

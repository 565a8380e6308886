"""Runs one execution of a flow: every step starts as soon as its dependencies are done.

The execution takes as long as its critical path. A skipped step counts as done
for the steps after it; a failed step skips the steps that need it, and fails
the execution (`on_error: fail`) or leaves it `partial` (`on_error: continue`).
Steps that already have an outcome in the document (a resumed execution) are
not run again; each new outcome is handed to `checkpoint` as soon as it exists,
but for those decided again without a call if lost (a skipped step's, a sleep's or
a callback's end) and the run's last (`rides_along`): those go with the next
write, or with the save (or suspend) that ends the run.
A document holding a step the flow does not have (renamed or removed by a deploy
since the execution started) runs nothing and fails, naming the steps.
An outcome the store refuses for good (StoreRefused) fails its step, with the
reason, and the execution goes on; any other error of a step ends the run and is
raised as itself, not as the TaskGroup's ExceptionGroup.

Each step records when it started and finished; a `for_each` step records each
item (status, attempts, times) as it ends, and reuses the items that succeeded in
an earlier run of a re-driven execution. When `cancel` is set the calls in
flight are abandoned, no new call starts, and the execution ends `cancelled`.

A step that waits longer than a push should (service/engine/waiting.py) ends the
run's part of it `waiting`; the steps after it wait too, the others go on, and
once nothing can run the execution is `waiting` (suspended) until its first
step's `wake_at`, not finished.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import structlog
from opentelemetry.trace import StatusCode

from service.engine.caching import StepCache
from service.engine.calls import CallResult, MLCaller
from service.engine.expressions import ITERATION_BUDGET, EvaluationError, render_value
from service.engine.flow import Flow, Step
from service.engine.progress import Cancelled, as_ready, rides_along, unless
from service.engine.waiting import Checkpoint, Waits
from service.errors import StoreRefused
from service.execution import (
    CANCELLED_BY_OPERATOR,
    MAX_ERROR_CHARS,
    Execution,
    ExecutionStatus,
    ItemResult,
    StepResult,
    StepStatus,
    now,
)
from service.metrics import Metrics
from service.telemetry import Tracing

log = structlog.get_logger(__name__)

# Any list for_each takes can still be filtered by CEL, which refuses the 10,000th iteration.
MAX_FOR_EACH_ITEMS = ITERATION_BUDGET - 1
FINAL_STEP_STATUSES = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED})


async def _no_checkpoint(name: str, result: StepResult) -> None:
    return None


class FlowRunner:
    """Executes flows with one caller, inside a hard time limit per execution."""

    def __init__(
        self,
        *,
        caller: MLCaller,
        waits: Waits,
        cache: StepCache,
        timeout_s: float,
        tracing: Tracing,
        metrics: Metrics,
    ) -> None:
        self._caller = caller
        self._waits = waits
        self._cache = cache
        self._timeout_s = timeout_s
        self._tracing = tracing
        self._metrics = metrics

    async def run(
        self,
        flow: Flow,
        execution: Execution,
        checkpoint: Checkpoint = _no_checkpoint,
        cancel: asyncio.Future[None] | None = None,
    ) -> Execution:
        """Run the steps of `flow` that have no outcome yet and finish `execution` (in place)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        execution.input = flow.with_defaults(execution.input)
        resumed = [
            name
            for name, result in execution.steps.items()
            if name in flow.steps and result.status in FINAL_STEP_STATUSES
        ]
        if resumed:
            log.info("execution resumed", completed_steps=resumed)
        unknown = [name for name in execution.steps if name not in flow.steps]

        self._metrics.in_flight.add(1)
        try:
            if unknown:
                raise FlowChanged(flow.name, unknown)
            async with asyncio.timeout_at(deadline):
                await unless(
                    cancel,
                    as_ready(
                        flow,
                        set(resumed),
                        lambda step: self._run_step(flow, step, execution, deadline, checkpoint),
                    ),
                )
        except TimeoutError:
            execution.end_running("execution timed out")
            execution.finish(
                ExecutionStatus.FAILED, f"timed out after {self._timeout_s:g} s (FLOW_TIMEOUT_S)"
            )
        except StoreRefused as exc:
            execution.end_running("not run: the execution store refused a step's outcome")
            execution.finish(ExecutionStatus.FAILED, str(exc))
        except Cancelled:
            execution.end_running(CANCELLED_BY_OPERATOR, StepStatus.CANCELLED)
            execution.finish(ExecutionStatus.CANCELLED, CANCELLED_BY_OPERATOR)
        except FlowChanged as exc:
            execution.end_running("not run: the flow changed")
            execution.finish(ExecutionStatus.FAILED, str(exc))
        else:
            waiting = [n for n, r in execution.steps.items() if r.status == StepStatus.WAITING]
            if waiting:
                execution.suspend(execution.callbacks)
                wait = execution.steps[waiting[0]].wait
                kind = wait.kind if wait is not None else "unknown"
                self._metrics.waits.add(1, {"flow": execution.flow, "kind": kind})
                log.info("execution waiting", steps=waiting, wake_at=execution.wake_at)
                return execution
            execution.finish(*_result(flow, execution))
        finally:
            self._metrics.in_flight.add(-1)
        labels = {"flow": execution.flow, "status": execution.status.value}
        self._metrics.executions.add(1, labels)
        self._metrics.execution_duration.record((execution.duration_ms or 0) / 1000, labels)
        log.info(
            "execution finished",
            status=execution.status,
            duration_ms=execution.duration_ms,
            error=execution.error,
        )
        return execution

    async def _run_step(
        self,
        flow: Flow,
        step: Step,
        execution: Execution,
        deadline: float,
        checkpoint: Checkpoint,
    ) -> bool:
        """Run one step; whether it is done (else it waits, and so do the steps after it)."""
        with self._tracing.span(f"step {step.name}", attributes={"step": step.name}) as span:
            result = await self._stored_outcome(flow, step, execution, deadline, checkpoint)
            if span is not None:
                span.set_attribute("status", result.status.value)
                if result.status == StepStatus.FAILED:
                    span.set_status(StatusCode.ERROR, result.error)
        if result.status == StepStatus.WAITING:
            log.info("step waiting", step=step.name, wake_at=result.wake_at)
            return False
        self._metrics.step_duration.record(
            result.duration_ms / 1000,
            {"flow": execution.flow, "step": step.name, "status": result.status.value},
        )
        log.info(
            "step finished",
            step=step.name,
            status=result.status,
            attempt=result.attempts,
            duration_ms=result.duration_ms,
            error=result.error,
        )
        return True

    async def _stored_outcome(
        self, flow: Flow, step: Step, execution: Execution, deadline: float, checkpoint: Checkpoint
    ) -> StepResult:
        """The step's outcome, handed to `checkpoint` unless it rides along with the next
        write; refused for good, it fails the step. A wait hands over what it must store
        before its call itself (`checkpoint`, unfiltered)."""
        result = await self._outcome(step, execution, deadline, checkpoint)
        execution.steps[step.name] = result
        if rides_along(flow, execution.steps, step.name, result):
            return result
        try:
            await checkpoint(step.name, result)
        except StoreRefused as exc:
            # Kept small, this outcome is stored; the answer cannot be, so it is lost.
            result = StepResult(
                status=StepStatus.FAILED,
                attempts=result.attempts,
                duration_ms=result.duration_ms,
                error=f"outcome not stored: {exc}"[:MAX_ERROR_CHARS],
            )
            execution.steps[step.name] = result
            await checkpoint(step.name, result)
        return result

    async def _outcome(
        self, step: Step, execution: Execution, deadline: float, checkpoint: Checkpoint
    ) -> StepResult:
        previous = execution.steps.get(step.name)
        if previous is not None and previous.status == StepStatus.WAITING:
            return await self._waits.resume(step, _scope(execution), execution, previous, deadline)
        failed = [name for name in step.after if execution.steps[name].status == StepStatus.FAILED]
        if failed:
            return _skipped(f"needs failed step {failed[0]}")
        scope = _scope(execution)
        try:
            if step.when is not None and not step.when.render(scope):
                return _skipped(None)
            items = step.for_each.render(scope) if step.for_each is not None else None
        except EvaluationError as exc:
            return _ended(StepStatus.FAILED, str(exc))

        result = StepResult(status=StepStatus.RUNNING, started_at=now())
        execution.steps[step.name] = result
        if step.waits:
            return await self._waits.start(step, scope, execution, result, deadline, checkpoint)
        started = time.perf_counter()
        if step.for_each is None:
            call = await self._call(step, scope, deadline, execution)
            result.cached, result.cached_from = call.cached_from is not None, call.cached_from
        else:
            call = await self._fan_out(step, scope, items, deadline, result, previous, execution)
        result.finished_at = now()
        result.duration_ms = round((time.perf_counter() - started) * 1000)
        result.attempts = call.attempts
        result.output = call.output
        result.error = call.error
        result.status = StepStatus.FAILED if call.error else StepStatus.SUCCEEDED
        return result

    async def _fan_out(
        self,
        step: Step,
        scope: dict[str, Any],
        items: Any,
        deadline: float,
        result: StepResult,
        previous: StepResult | None,
        execution: Execution,
    ) -> CallResult:
        """One call per item; `result` shows each item's outcome as it ends."""
        if not isinstance(items, list):
            return CallResult(None, f"for_each: expected a list, got {_kind(items)}", 0)
        if len(items) > MAX_FOR_EACH_ITEMS:
            return CallResult(
                None, f"for_each: {len(items)} items, at most {MAX_FOR_EACH_ITEMS}", 0
            )
        kept = _succeeded_items(previous, len(items))
        outputs: list[Any] = [None] * len(items)
        records = [ItemResult(status=StepStatus.RUNNING) for _ in items]
        if previous is not None and kept:
            for i in kept:
                outputs[i], records[i] = previous.output[i], previous.items[i]  # type: ignore[index]
        result.output, result.items = outputs, records
        limit = asyncio.Semaphore(step.max_concurrency)

        async def one(index: int, item: Any) -> None:
            async with limit:
                record = records[index]
                record.started_at = now()
                call = await self._call(step, {**scope, "item": item}, deadline, execution)
                outputs[index] = call.output
                record.attempts, record.error = call.attempts, call.error
                record.cached, record.cached_from = call.cached_from is not None, call.cached_from
                record.status = StepStatus.FAILED if call.error else StepStatus.SUCCEEDED
                record.finished_at = now()

        await asyncio.gather(*(one(i, item) for i, item in enumerate(items) if i not in kept))
        errors = [f"[{i}] {record.error}" for i, record in enumerate(records) if record.error]
        error = f"{len(errors)} of {len(records)} items failed: {errors[0]}" if errors else None
        attempts = sum(records[i].attempts for i in range(len(items)) if i not in kept)
        return CallResult(output=outputs, error=error, attempts=attempts)

    async def _call(
        self, step: Step, scope: dict[str, Any], deadline: float, execution: Execution
    ) -> CallResult:
        """One call with its body made from `scope` (or the answer the step's cache kept);
        the answer shaped by the step's `output`."""

        def shaped(call: CallResult) -> CallResult:
            if call.error is not None or step.output is None:
                return call
            try:
                output = render_value(step.output, {**scope, "response": call.output})
            except EvaluationError as exc:
                return replace(call, output=None, error=str(exc))
            return replace(call, output=output)

        if step.cache is None:
            return shaped(await self._caller.call_with(step, scope, deadline))
        return await self._cache.through(
            execution.flow,
            step,
            scope,
            execution.execution_id,
            lambda: self._caller.call_with(step, scope, deadline),
            shaped,
        )


class FlowChanged(Exception):
    """The execution holds outcomes of steps its flow no longer has."""

    def __init__(self, flow: str, steps: list[str]) -> None:
        super().__init__(
            f"flow {flow!r} no longer has these steps of the execution: {', '.join(steps)} "
            "(renamed or removed since it started); nothing ran"
        )


def _succeeded_items(previous: StepResult | None, count: int) -> set[int]:
    """Indexes of the items an earlier run of the step called with success."""
    if previous is None or previous.items is None or len(previous.items) != count:
        return set()
    if not isinstance(previous.output, list) or len(previous.output) != count:
        return set()
    return {i for i, item in enumerate(previous.items) if item.status == StepStatus.SUCCEEDED}


def _skipped(error: str | None) -> StepResult:
    return _ended(StepStatus.SKIPPED, error)


def _ended(status: StepStatus, error: str | None) -> StepResult:
    """An outcome decided without a call: skipped, or failed by its own expressions."""
    moment = now()
    return StepResult(status=status, error=error, started_at=moment, finished_at=moment)


def _scope(execution: Execution) -> dict[str, Any]:
    """What expressions read: `input`, and each step as its own variable `steps.NAME`."""
    scope: dict[str, Any] = {
        f"steps.{name}": {"status": result.status.value, "output": result.output}
        for name, result in execution.steps.items()
    }
    scope["input"] = execution.input
    return scope


def _result(flow: Flow, execution: Execution) -> tuple[ExecutionStatus, str | None]:
    """The verdict; with it, where the flow has one and the run did not fail, its `result`."""
    status, error = _verdict(flow, execution)
    if flow.result is None or status == ExecutionStatus.FAILED:
        return status, error
    try:
        execution.result = render_value(flow.result, _scope(execution))
    except EvaluationError as exc:
        return ExecutionStatus.FAILED, str(exc)
    return status, error


def _verdict(flow: Flow, execution: Execution) -> tuple[ExecutionStatus, str | None]:
    failed = [name for name, r in execution.steps.items() if r.status == StepStatus.FAILED]
    fatal = [name for name in failed if flow.steps[name].on_error == "fail"]
    if fatal:
        return ExecutionStatus.FAILED, f"step {fatal[0]} failed: {execution.steps[fatal[0]].error}"
    if failed:
        return ExecutionStatus.PARTIAL, f"steps failed: {', '.join(failed)}"
    return ExecutionStatus.SUCCEEDED, None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__

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

A step that waits longer than a push should (service/engine/kinds/) ends the
run's part of it `waiting`; the steps after it wait too, the others go on, and
once nothing can run the execution is `waiting` (suspended) until its first
step's `wake_at`, not finished.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from opentelemetry.trace import StatusCode

from service.engine.expressions import EvaluationError, render_value
from service.engine.flow import Flow
from service.engine.kinds import KINDS
from service.engine.kinds.base import Checkpoint, Tools, Turn, failed
from service.engine.progress import Cancelled, as_ready, rides_along, unless
from service.engine.shadows import Shadows
from service.engine.step import Step
from service.errors import StoreRefused
from service.execution import (
    CANCELLED_BY_OPERATOR,
    MAX_ERROR_CHARS,
    Execution,
    ExecutionStatus,
    StepResult,
    StepStatus,
    now,
)
from service.metrics import Metrics
from service.telemetry import Tracing

log = structlog.get_logger(__name__)

FINAL_STEP_STATUSES = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED})


async def _no_checkpoint(name: str, result: StepResult) -> None:
    return None


class FlowRunner:
    """Executes flows with one set of tools (caller, cache, ...), inside a hard time limit
    per execution; what each step does is its kind's (service/engine/kinds/)."""

    def __init__(
        self,
        *,
        tools: Tools,
        timeout_s: float,
        tracing: Tracing,
        metrics: Metrics,
    ) -> None:
        self._tools = tools
        self._timeout_s = timeout_s
        self._tracing = tracing
        self._metrics = metrics

    @property
    def shadows(self) -> Shadows:
        """The shadow calls its runs start, held until their run is over."""
        return self._tools.shadows

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
        kind = KINDS[step.kind]
        previous = execution.steps.get(step.name)
        scope = _scope(execution)
        if previous is not None and previous.status == StepStatus.WAITING:
            wait = previous.wait
            if wait is None or previous.wake_at is None or wait.kind != step.kind:
                return failed(previous, "its wait was not recorded")
            turn = Turn(self._tools, execution, scope, previous, deadline, checkpoint)
            return await kind.resume(step, turn)
        failed_before = [n for n in step.after if execution.steps[n].status == StepStatus.FAILED]
        if failed_before:
            return _skipped(f"needs failed step {failed_before[0]}")
        try:
            if step.when is not None and not step.when.render(scope):
                return _skipped(None)
        except EvaluationError as exc:
            return _ended(StepStatus.FAILED, str(exc))
        result = StepResult(status=StepStatus.RUNNING, started_at=now())
        execution.steps[step.name] = result
        turn = Turn(self._tools, execution, scope, result, deadline, checkpoint, previous)
        return await kind.start(step, turn)


class FlowChanged(Exception):
    """The execution holds outcomes of steps its flow no longer has."""

    def __init__(self, flow: str, steps: list[str]) -> None:
        super().__init__(
            f"flow {flow!r} no longer has these steps of the execution: {', '.join(steps)} "
            "(renamed or removed since it started); nothing ran"
        )


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

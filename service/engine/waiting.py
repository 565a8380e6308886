"""How a step that waits goes on: a poll of a long-running operation, a callback, a sleep.

A wait that ends within `inline_wait_s` (and the run's deadline) is waited here,
inside the push; a longer one leaves the step `waiting` with its `wake_at`, and the
execution suspends once nothing else can run (service/engine/runner.py). When it
resumes, `resume` picks the step up where it stopped:

    sleep     ends at wake_at; its output is null
    poll      reads the operation at `poll.url` whenever it is due, the interval
              doubling from `every` to `max_every`, until `poll.until` (an
              operation's `error` fails the step) or `timeout`; output: the last answer
    callback  the token is stored (as a digest) before the call, whose body may carry
              `${callback.url}`: the answer can come before the call ends. Output: the
              JSON posted there; no answer by `timeout` fails the step

A step resumed before it is due (a redelivered message, say) stays as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from service.callback_tokens import new_callback_token
from service.durations import MAX_WAIT_S
from service.engine.calls import CallResult, MLCaller
from service.engine.expressions import EvaluationError, render_value
from service.engine.flow import Step
from service.execution import (
    MAX_ERROR_CHARS,
    Execution,
    StepResult,
    StepStatus,
    Wait,
    in_utc,
    now,
)

# An inline wait ends at least this long before the run's deadline.
DEADLINE_MARGIN_S = 1.0
DEFAULT_INLINE_WAIT_S = 10.0

Checkpoint = Callable[[str, StepResult], Awaitable[None]]


class Waits:
    """Starts and resumes the waits of one runner's steps."""

    def __init__(
        self,
        caller: MLCaller,
        inline_wait_s: float = DEFAULT_INLINE_WAIT_S,
        callback_base: str | None = None,
    ) -> None:
        self._caller = caller
        self._inline_wait_s = inline_wait_s
        self._callback_base = callback_base.rstrip("/") if callback_base else None

    async def start(
        self,
        step: Step,
        scope: dict[str, Any],
        execution: Execution,
        result: StepResult,
        deadline: float,
        checkpoint: Checkpoint,
    ) -> StepResult:
        """Begin the step's wait: `result` is the step's running outcome."""
        if step.kind == "sleep":
            try:
                wake_at = _sleep_end(step, scope)
            except (EvaluationError, ValueError) as exc:
                return _failed(result, str(exc))
            result.wait = Wait(kind="sleep", timeout_at=wake_at)
            return await self._sleep(result, wake_at, deadline)
        if step.kind == "callback":
            return await self._call_back(step, scope, execution, result, deadline, checkpoint)
        assert step.poll is not None
        call = await self._caller.call_with(step, scope, deadline)
        result.attempts = call.attempts
        if call.error is not None:
            return _failed(result, call.error)
        timeout_at = now() + timedelta(seconds=step.poll.timeout_s)
        result.wait = Wait(kind="poll", timeout_at=timeout_at, every_s=step.poll.every_s)
        return await self._polled(step, scope, result, call.output, deadline)

    async def resume(
        self,
        step: Step,
        scope: dict[str, Any],
        execution: Execution,
        result: StepResult,
        deadline: float,
    ) -> StepResult:
        """Go on with a waiting step: `result` is its stored outcome (status `waiting`)."""
        wait = result.wait
        if wait is None or result.wake_at is None:
            return _failed(result, "its wait was not recorded")
        if wait.kind == "callback":
            if step.name in execution.callbacks:
                answer = execution.callbacks[step.name]
                return _shaped(step, scope, result, answer)
            if now() >= wait.timeout_at:
                return _failed(result, f"no callback within {_span(result, wait)}")
            return result
        if wait.kind == "sleep":
            return await self._sleep(result, result.wake_at, deadline)
        if not self._inline(result.wake_at, deadline):
            return result
        await _until(result.wake_at)
        return await self._poll_again(step, scope, result, deadline)

    async def _sleep(self, result: StepResult, wake_at: datetime, deadline: float) -> StepResult:
        result.wake_at = wake_at
        if not self._inline(wake_at, deadline):
            result.status = StepStatus.WAITING
            return result
        await _until(wake_at)
        return _ended(result, StepStatus.SUCCEEDED, None)

    async def _call_back(
        self,
        step: Step,
        scope: dict[str, Any],
        execution: Execution,
        result: StepResult,
        deadline: float,
        checkpoint: Checkpoint,
    ) -> StepResult:
        assert step.callback_timeout_s is not None
        if self._callback_base is None:
            return _failed(result, "callback: the service's URL is unknown (set PUBLIC_URL)")
        token, digest = new_callback_token(execution.execution_id, step.name, execution.run)
        timeout_at = now() + timedelta(seconds=step.callback_timeout_s)
        result.status, result.wake_at = StepStatus.WAITING, timeout_at
        result.wait = Wait(
            kind="callback", timeout_at=timeout_at, callback_sha256=digest, run=execution.run
        )
        # Written before the call, whatever else runs (it rides with nothing): the callback
        # may be posted before the call answers, and must find its wait.
        await checkpoint(step.name, result)
        callback = {"url": f"{self._callback_base}/callbacks/{token}"}
        call = await self._caller.call_with(step, {**scope, "callback": callback}, deadline)
        result.attempts = call.attempts
        if call.error is not None:
            return _failed(result, call.error)
        return result

    async def _polled(
        self,
        step: Step,
        scope: dict[str, Any],
        result: StepResult,
        answer: Any,
        deadline: float,
    ) -> StepResult:
        """Judge the operation's latest `answer`; poll again inline while that is short."""
        assert step.poll is not None and result.wait is not None
        while True:
            result.output = answer
            error = _operation_error(answer)
            if error is not None:
                return _failed(result, f"the operation failed: {error}")
            try:
                done = step.poll.until.render({**scope, "response": answer})
            except EvaluationError as exc:
                return _failed(result, str(exc))
            if done:
                return _shaped(step, scope, result, answer)
            moment = now()
            if moment >= result.wait.timeout_at:
                return _failed(
                    result, f"the operation was not done within {step.poll.timeout_s:g} s"
                )
            interval = result.wait.every_s or step.poll.every_s
            result.wait.every_s = min(interval * 2, step.poll.max_every_s)
            result.wake_at = min(moment + timedelta(seconds=interval), result.wait.timeout_at)
            result.status = StepStatus.WAITING
            if not self._inline(result.wake_at, deadline):
                return result
            await _until(result.wake_at)
            call = await self._poll_call(step, scope, answer, deadline)
            result.attempts += call.attempts
            if call.error is not None:
                return _failed(result, call.error)
            answer = call.output

    async def _poll_again(
        self, step: Step, scope: dict[str, Any], result: StepResult, deadline: float
    ) -> StepResult:
        call = await self._poll_call(step, scope, result.output, deadline)
        result.attempts += call.attempts
        if call.error is not None:
            return _failed(result, call.error)
        return await self._polled(step, scope, result, call.output, deadline)

    async def _poll_call(
        self, step: Step, scope: dict[str, Any], operation: Any, deadline: float
    ) -> CallResult:
        assert step.poll is not None
        try:
            url = step.poll.url.render({**scope, "response": operation})
        except EvaluationError as exc:
            return CallResult(None, str(exc), 0)
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            return CallResult(None, f"poll.url: {str(url)[:200]!r} is not an http(s) URL", 0)
        return await self._caller.call(step, None, deadline, poll_url=url)

    def _inline(self, wake_at: datetime, deadline: float) -> bool:
        """Whether a wait until `wake_at` stays in this push rather than suspending."""
        remaining = (wake_at - now()).total_seconds()
        room = deadline - asyncio.get_running_loop().time() - DEADLINE_MARGIN_S
        return remaining <= min(self._inline_wait_s, room)


def _sleep_end(step: Step, scope: dict[str, Any]) -> datetime:
    if step.sleep_s is not None:
        return now() + timedelta(seconds=step.sleep_s)
    assert step.sleep_until is not None
    value = step.sleep_until.render(scope)
    if not isinstance(value, str):
        raise ValueError(f"sleep_until: expected a timestamp, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError
        moment = in_utc(moment)
    except ValueError:
        raise ValueError(f"sleep_until: {value[:100]!r} is not an RFC 3339 timestamp") from None
    if (moment - now()).total_seconds() > MAX_WAIT_S:
        raise ValueError(f"sleep_until: {value[:100]!r} is more than 30 days ahead")
    return moment


def _operation_error(answer: Any) -> str | None:
    """A long-running operation's `error` (google.rpc.Status), as text; None if it has none."""
    if not isinstance(answer, dict) or not answer.get("error"):
        return None
    error = answer["error"]
    if isinstance(error, dict):
        return str(error.get("message") or error)[:MAX_ERROR_CHARS]
    return str(error)[:MAX_ERROR_CHARS]


async def _until(moment: datetime) -> None:
    await asyncio.sleep(max(0.0, (moment - now()).total_seconds()))


def _shaped(step: Step, scope: dict[str, Any], result: StepResult, answer: Any) -> StepResult:
    """Succeeded, with `answer` shaped by the step's `output` (as `response`)."""
    if step.output is None:
        result.output = answer
        return _ended(result, StepStatus.SUCCEEDED, None)
    try:
        result.output = render_value(step.output, {**scope, "response": answer})
    except EvaluationError as exc:
        return _failed(result, str(exc))
    return _ended(result, StepStatus.SUCCEEDED, None)


def _failed(result: StepResult, error: str) -> StepResult:
    return _ended(result, StepStatus.FAILED, error)


def _ended(result: StepResult, status: StepStatus, error: str | None) -> StepResult:
    result.status, result.error, result.wake_at = status, error, None
    result.finished_at = now()
    if result.started_at is not None:
        span = result.finished_at - result.started_at
        result.duration_ms = round(span.total_seconds() * 1000)
    return result


def _span(result: StepResult, wait: Wait) -> str:
    seconds = (wait.timeout_at - (result.started_at or wait.timeout_at)).total_seconds()
    return f"{seconds:g} s"

"""A call that starts a long-running operation, then polls it: `poll: {url, until, every,
max_every, timeout}`. The operation at `poll.url` is read whenever it is due, the
interval doubling from `every` to `max_every`, until `poll.until` is true (an
operation's `error`, google.rpc.Status, fails the step) or `timeout`. The output is the
last answer (shaped by `output`). Polls due soon are made inline (Tools.inline)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from service.engine.calls import CallResult
from service.engine.expressions import EvaluationError, Names, Template
from service.engine.flow_spec import StepSpec
from service.engine.kinds.base import Turn, failed, one_line, seconds, shaped, typed, until
from service.engine.step import Poll as Compiled
from service.engine.step import Step, StepKind
from service.execution import MAX_ERROR_CHARS, StepResult, StepStatus, Wait, now


class Poll:
    name: StepKind = "poll"
    fields: tuple[str, ...] = ("poll",)
    options: tuple[str, ...] = ()
    calls = True
    waits = True
    fans_out = False
    replayed = False
    scope = frozenset[str]()

    def compile(self, spec: StepSpec, names: Names, env: Mapping[str, str]) -> dict[str, Any]:
        assert spec.poll is not None
        answer = Names("poll.url", names.roots | {"response"}, names.steps, names.flow_steps)
        until_true = Template.parse(spec.poll.until, answer.at("poll.until"), env)
        poll = Compiled(
            url=Template.parse(spec.poll.url, answer, env),
            until=typed(until_true, "poll.until", ("BOOL", "NULL")),
            every_s=float(spec.poll.every),
            max_every_s=float(spec.poll.max_every or spec.poll.every),
            timeout_s=float(spec.poll.timeout),
        )
        return {"poll": poll}

    async def start(self, step: Step, turn: Turn) -> StepResult:
        assert step.poll is not None
        result = turn.result
        call = await turn.tools.caller.call_with(step, turn.scope, turn.deadline)
        result.attempts = call.attempts
        if call.error is not None:
            return failed(result, call.error)
        timeout_at = now() + timedelta(seconds=step.poll.timeout_s)
        result.wait = Wait(kind="poll", timeout_at=timeout_at, every_s=step.poll.every_s)
        return await _judged(step, turn, call.output)

    async def resume(self, step: Step, turn: Turn) -> StepResult:
        result = turn.result
        assert result.wake_at is not None
        if not turn.tools.inline(result.wake_at, turn.deadline):
            return result
        await until(result.wake_at)
        call = await _poll(step, turn, result.output)
        result.attempts += call.attempts
        if call.error is not None:
            return failed(result, call.error)
        return await _judged(step, turn, call.output)

    def described(self, step: Step) -> str | None:
        assert step.poll is not None
        every = f"every {seconds(step.poll.every_s)}"
        if step.poll.max_every_s != step.poll.every_s:
            every += f" to {seconds(step.poll.max_every_s)}"
        return f"polls until {one_line(step.poll.until.source)}, {every}"


async def _judged(step: Step, turn: Turn, answer: Any) -> StepResult:
    """Judge the operation's latest `answer`; poll again inline while that is short."""
    result, scope = turn.result, turn.scope
    assert step.poll is not None and result.wait is not None
    while True:
        result.output = answer
        error = _operation_error(answer)
        if error is not None:
            return failed(result, f"the operation failed: {error}")
        try:
            done = step.poll.until.render({**scope, "response": answer})
        except EvaluationError as exc:
            return failed(result, str(exc))
        if done:
            return shaped(step, scope, result, answer)
        moment = now()
        if moment >= result.wait.timeout_at:
            return failed(result, f"the operation was not done within {step.poll.timeout_s:g} s")
        interval = result.wait.every_s or step.poll.every_s
        result.wait.every_s = min(interval * 2, step.poll.max_every_s)
        result.wake_at = min(moment + timedelta(seconds=interval), result.wait.timeout_at)
        result.status = StepStatus.WAITING
        if not turn.tools.inline(result.wake_at, turn.deadline):
            return result
        await until(result.wake_at)
        call = await _poll(step, turn, answer)
        result.attempts += call.attempts
        if call.error is not None:
            return failed(result, call.error)
        answer = call.output


async def _poll(step: Step, turn: Turn, operation: Any) -> CallResult:
    """A GET of the operation at `poll.url`, which reads its last answer."""
    assert step.poll is not None
    try:
        url = step.poll.url.render({**turn.scope, "response": operation})
    except EvaluationError as exc:
        return CallResult(None, str(exc), 0)
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        return CallResult(None, f"poll.url: {str(url)[:200]!r} is not an http(s) URL", 0)
    return await turn.tools.caller.call(step, None, turn.deadline, poll_url=url)


def _operation_error(answer: Any) -> str | None:
    """A long-running operation's `error` (google.rpc.Status), as text; None if it has none."""
    if not isinstance(answer, dict) or not answer.get("error"):
        return None
    error = answer["error"]
    if isinstance(error, dict):
        return str(error.get("message") or error)[:MAX_ERROR_CHARS]
    return str(error)[:MAX_ERROR_CHARS]

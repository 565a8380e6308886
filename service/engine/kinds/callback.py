"""A call answered later: `callback: {timeout: 1h}`. The wait's token is stored (as a
digest) before the call, whose body may carry `${callback.url}`: the answer can come
before the call ends. Its output is the JSON posted there (shaped by `output`); no
answer by `timeout` fails the step. Answering is the worker's (worker/wakes.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from service.callback_tokens import new_callback_token
from service.engine.expressions import Names
from service.engine.flow_spec import StepSpec
from service.engine.kinds.base import Turn, failed, seconds, shaped
from service.engine.step import Step, StepKind
from service.execution import StepResult, StepStatus, Wait, now


class Callback:
    name: StepKind = "callback"
    fields: tuple[str, ...] = ("callback",)
    options: tuple[str, ...] = ()
    calls = True
    waits = True
    fans_out = False
    replayed = True  # its answer is stored: a resume ends it again
    scope = frozenset({"callback"})

    def compile(self, spec: StepSpec, names: Names, env: Mapping[str, str]) -> dict[str, Any]:
        assert spec.callback is not None
        return {"callback_timeout_s": float(spec.callback.timeout)}

    async def start(self, step: Step, turn: Turn) -> StepResult:
        assert step.callback_timeout_s is not None
        result, execution, base = turn.result, turn.execution, turn.tools.callback_base
        if base is None:
            return failed(result, "callback: the service's URL is unknown (set PUBLIC_URL)")
        token, digest = new_callback_token(execution.execution_id, step.name, execution.run)
        timeout_at = now() + timedelta(seconds=step.callback_timeout_s)
        result.status, result.wake_at = StepStatus.WAITING, timeout_at
        result.wait = Wait(
            kind="callback", timeout_at=timeout_at, callback_sha256=digest, run=execution.run
        )
        # Written before the call, whatever else runs (it rides with nothing): the callback
        # may be posted before the call answers, and must find its wait.
        await turn.checkpoint(step.name, result)
        callback = {"url": f"{base.rstrip('/')}/callbacks/{token}"}
        caller = turn.tools.caller
        call = await caller.call_with(step, {**turn.scope, "callback": callback}, turn.deadline)
        result.attempts = call.attempts
        if call.error is not None:
            return failed(result, call.error)
        return result

    async def resume(self, step: Step, turn: Turn) -> StepResult:
        result, wait = turn.result, turn.result.wait
        assert wait is not None
        if step.name in turn.execution.callbacks:
            return shaped(step, turn.scope, result, turn.execution.callbacks[step.name])
        if now() >= wait.timeout_at:
            span = (wait.timeout_at - (result.started_at or wait.timeout_at)).total_seconds()
            return failed(result, f"no callback within {span:g} s")
        return result

    def described(self, step: Step) -> str | None:
        assert step.callback_timeout_s is not None
        return f"waits for a callback, at most {seconds(step.callback_timeout_s)}"

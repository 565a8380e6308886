"""A sleep: `sleep: 30s` or `sleep_until: ${...}` (an RFC 3339 timestamp, at most 30 days
ahead). No call; it ends at its `wake_at`, with a null output, inline if that is soon
(Tools.inline), else the execution suspends until then."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from service.durations import MAX_WAIT_S
from service.engine.expressions import EvaluationError, Names, Template
from service.engine.flow_spec import StepSpec
from service.engine.kinds.base import Turn, ended, failed, one_line, seconds, until
from service.engine.step import Step, StepKind
from service.execution import StepResult, StepStatus, Wait, in_utc, now


class Sleep:
    name: StepKind = "sleep"
    fields: tuple[str, ...] = ("sleep", "sleep_until")
    options: tuple[str, ...] = ()
    calls = False
    waits = True
    fans_out = False
    replayed = True  # it ends at a time the document holds
    scope = frozenset[str]()

    def compile(self, spec: StepSpec, names: Names, env: Mapping[str, str]) -> dict[str, Any]:
        if spec.sleep is not None:
            return {"sleep_s": float(spec.sleep)}
        assert spec.sleep_until is not None
        return {"sleep_until": Template.parse(spec.sleep_until, names.at("sleep_until"), env)}

    async def start(self, step: Step, turn: Turn) -> StepResult:
        try:
            wake_at = _end(step, turn.scope)
        except (EvaluationError, ValueError) as exc:
            return failed(turn.result, str(exc))
        turn.result.wait = Wait(kind="sleep", timeout_at=wake_at)
        return await _sleep(turn, wake_at)

    async def resume(self, step: Step, turn: Turn) -> StepResult:
        assert turn.result.wake_at is not None
        return await _sleep(turn, turn.result.wake_at)

    def described(self, step: Step) -> str | None:
        if step.sleep_s is not None:
            return f"sleeps {seconds(step.sleep_s)}"
        assert step.sleep_until is not None
        return f"sleeps until {one_line(step.sleep_until.source)}"


async def _sleep(turn: Turn, wake_at: datetime) -> StepResult:
    result = turn.result
    result.wake_at = wake_at
    if not turn.tools.inline(wake_at, turn.deadline):
        result.status = StepStatus.WAITING
        return result
    await until(wake_at)
    return ended(result, StepStatus.SUCCEEDED, None)


def _end(step: Step, scope: dict[str, Any]) -> datetime:
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

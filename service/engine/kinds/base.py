"""What every kind of step is to the engine (`Kind`), what it is given as it runs (`Turn`,
`Tools`), and the outcomes and checks the kinds share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from service.engine.caching import StepCache
from service.engine.calls import MLCaller
from service.engine.expressions import (
    ITERATION_BUDGET,
    EvaluationError,
    ExpressionError,
    Names,
    Template,
    UnsetEnvironment,
    render_value,
)
from service.engine.flow_spec import StepSpec
from service.engine.shadows import Shadows
from service.engine.step import Step, StepKind
from service.execution import Execution, ParentRef, StepResult, StepStatus, now

# Any list for_each takes can still be filtered by CEL, which refuses the 10,000th iteration.
MAX_FOR_EACH_ITEMS = ITERATION_BUDGET - 1
# An inline wait ends at least this long before the run's deadline.
DEADLINE_MARGIN_S = 1.0
DEFAULT_INLINE_WAIT_S = 10.0

Checkpoint = Callable[[str, StepResult], Awaitable[None]]


class ChildRefused(Exception):
    """A child execution that cannot start: its input does not fit its flow (the fields)."""


class ChildStarter(Protocol):
    """Starts child executions: checks each input against its flow, publishes its request
    (the worker's service/worker/children.py); ChildRefused when an input does not fit."""

    def check(self, flow: str, input: Any) -> None:
        """ChildRefused naming the field unless `input` fits `flow`'s schema."""
        ...

    async def start(self, execution_id: str, flow: str, input: Any, parent: ParentRef) -> None:
        """Publish the child's request (BrokerUnavailable when the broker refuses it)."""
        ...

    async def again(self, execution_id: str, flow: str, input: Any, parent: ParentRef) -> Any:
        """For a re-driven parent, its child of an earlier run: re-driven if it ended
        without success, started if it was never stored, left to end if it runs (its end
        comes to the parent's wait of now); the end of one that succeeded, which is kept
        (nothing runs), else None. BrokerUnavailable as `start`."""
        ...

    async def end_of(self, execution_id: str) -> Any:
        """The child's end as its report carries it, read from its document if it has
        ended; None if it has not (or is unknown)."""
        ...


class NoChildren:
    """Where no broker runs child executions (`python -m service run`, an engine alone):
    a flow step fails, saying where it runs."""

    REASON = "flow: child executions run in the service, through its broker"

    def check(self, flow: str, input: Any) -> None:
        raise ChildRefused(self.REASON)

    async def start(self, execution_id: str, flow: str, input: Any, parent: ParentRef) -> None:
        raise ChildRefused(self.REASON)

    async def again(self, execution_id: str, flow: str, input: Any, parent: ParentRef) -> Any:
        raise ChildRefused(self.REASON)

    async def end_of(self, execution_id: str) -> Any:
        return None


@dataclass(frozen=True, slots=True)
class Tools:
    """What steps use as they run, one set per runner.

    A wait that ends within `inline_wait_s` (and the run's deadline) is waited inside
    the push; `callback_base` is the service's URL, which callbacks are posted to.
    """

    caller: MLCaller
    cache: StepCache
    children: ChildStarter
    shadows: Shadows
    inline_wait_s: float = DEFAULT_INLINE_WAIT_S
    callback_base: str | None = None

    def inline(self, wake_at: datetime, deadline: float) -> bool:
        """Whether a wait until `wake_at` stays in this push rather than suspending."""
        remaining = (wake_at - now()).total_seconds()
        room = deadline - asyncio.get_running_loop().time() - DEADLINE_MARGIN_S
        return remaining <= min(self.inline_wait_s, room)


@dataclass(frozen=True, slots=True)
class Turn:
    """One step's run: its execution, what its expressions read (`scope`), its outcome
    (`result`: running when it starts, the stored one when it resumes), the run's
    deadline (the event loop's clock) and what stores an outcome before it ends."""

    tools: Tools
    execution: Execution
    scope: dict[str, Any]
    result: StepResult
    deadline: float
    checkpoint: Checkpoint
    previous: StepResult | None = None  # an earlier run's outcome (a re-drive's items)


class Kind(Protocol):
    """A kind of step: everything the engine knows of it, from its YAML to its graph.

    The runner calls `start` once a step can run (its `when` true) with a running
    outcome, and `resume` when a suspended execution goes on with the outcome the step
    stored `waiting`; both return the outcome, ended or `waiting` (with `wake_at`).
    """

    name: StepKind
    # The YAML fields that make a step of this kind; none: the kind of a step without them.
    fields: tuple[str, ...]
    options: tuple[str, ...]  # the YAML fields only a step of this kind may have
    calls: bool  # it makes HTTP calls: `call:` required, tokens, limits
    waits: bool  # it may end `waiting`: no cache
    fans_out: bool  # it may have a `for_each`
    # Its success is decided again without a call if lost: it rides with the next write.
    replayed: bool
    scope: frozenset[str]  # what its body may read besides input and steps

    def compile(self, spec: StepSpec, names: Names, env: Mapping[str, str]) -> dict[str, Any]:
        """The Step fields of this kind, from its spec (ExpressionError when wrong)."""
        ...

    async def start(self, step: Step, turn: Turn) -> StepResult: ...

    async def resume(self, step: Step, turn: Turn) -> StepResult: ...

    def described(self, step: Step) -> str | None:
        """What the step does besides a call, in a few words (graph and dashboard)."""
        ...


def items_of(step: Step, scope: dict[str, Any]) -> list[Any]:
    """The list a `for_each` step runs over; ValueError saying why it is not one."""
    assert step.for_each is not None
    try:
        items = step.for_each.render(scope)
    except EvaluationError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(items, list):
        kind = "null" if items is None else type(items).__name__
        raise ValueError(f"for_each: expected a list, got {kind}")
    if len(items) > MAX_FOR_EACH_ITEMS:
        raise ValueError(f"for_each: {len(items)} items, at most {MAX_FOR_EACH_ITEMS}")
    return items


def failed_items(step: Step, failed: int, items: int, first: str) -> str | None:
    """Why a for_each step fails when `failed` of its `items` did, `first` the first of
    them; None while none did, or no more than its `tolerate:` allows."""
    if failed == 0:
        return None
    tolerance = step.tolerate
    if tolerance is None:
        return f"{failed} of {items} items failed: {first}"
    if tolerance.allows(failed, items):
        return None
    beyond = f"more than tolerate allows ({tolerance.failures})"
    return f"{failed} of {items} items failed, {beyond}: {first}"


def shaped(step: Step, scope: dict[str, Any], result: StepResult, answer: Any) -> StepResult:
    """Succeeded, with `answer` shaped by the step's `output` (as `response`)."""
    if step.output is None:
        result.output = answer
        return ended(result, StepStatus.SUCCEEDED, None)
    try:
        result.output = render_value(step.output, {**scope, "response": answer})
    except EvaluationError as exc:
        return failed(result, str(exc))
    return ended(result, StepStatus.SUCCEEDED, None)


def failed(result: StepResult, error: str) -> StepResult:
    return ended(result, StepStatus.FAILED, error)


def ended(result: StepResult, status: StepStatus, error: str | None) -> StepResult:
    result.status, result.error, result.wake_at = status, error, None
    result.finished_at = now()
    if result.started_at is not None:
        span = result.finished_at - result.started_at
        result.duration_ms = round(span.total_seconds() * 1000)
    return result


async def until(moment: datetime) -> None:
    await asyncio.sleep(max(0.0, (moment - now()).total_seconds()))


def typed(template: Template, where: str, accepted: tuple[str, ...]) -> Template:
    """`template`, if CEL's checker says its result can be one of `accepted` (or is DYN:
    only known at run time). Text around an expression in `when` is a string, which is
    true, as it was before CEL."""
    kind = template.result_type
    if kind == "DYN" or kind.startswith(accepted) or (where == "when" and not template.whole):
        return template
    expected = accepted[0].lower()
    raise ExpressionError(f"{where}: {template.source!r} gives {kind.lower()}, not {expected}")


def seconds(value: float) -> str:
    """A duration as it would be written in a flow: `30s`, `5m`, `7d`."""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if value >= size and value % size == 0:
            return f"{value // size:g}{unit}"
    return f"{value:g}s"


def one_line(text: str) -> str:
    return " ".join(text.split())


def succeeded_items(previous: StepResult | None, count: int) -> set[int]:
    """Indexes of the items an earlier run of a `for_each` step of `count` items ended
    with success: a re-drive keeps them."""
    if previous is None or previous.items is None or len(previous.items) != count:
        return set()
    if not isinstance(previous.output, list) or len(previous.output) != count:
        return set()
    return {i for i, item in enumerate(previous.items) if item.status == StepStatus.SUCCEEDED}


def fixed(field: str, text: str, env: Mapping[str, str]) -> str:
    """A value fixed when the flow loads: it may use ${env.NAME}, nothing else."""
    nothing = Names(field, frozenset(), frozenset())
    try:
        template = Template.parse(text, nothing, env)
    except UnsetEnvironment:
        raise
    except ExpressionError:
        raise ExpressionError(f"{field}: only ${{env.NAME}} may be used, not {text!r}") from None
    return str(template.render({}))


def fixed_url(field: str, text: str, env: Mapping[str, str]) -> str:
    """`fixed`, and an http(s) URL."""
    url = fixed(field, text, env)
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ExpressionError(f"{field}: {url!r} is not an http(s) URL")
    return url

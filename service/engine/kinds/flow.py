"""A step that runs another flow: `flow: NAME` with its `input` (CEL, like `body`), once or
once per item of `for_each` (`max_concurrency` children at a time), each child an
execution of its own, started through the broker (ChildStarter: worker/children.py).

The step waits, suspended, while its children run. A child's id is derived from this
execution, the step and the item, and written here before the child is published, so
a redelivery or a crash never starts a second one; a re-driven parent keeps the items
whose child succeeded and has the others' children `again` (re-driven, each the same
execution in its next run). Each child's end is kept for this execution (its answers,
under `step` or `step#index`) and resumes it when a child's slot frees for one not
started, or when the last one ends. The output is the
child's result (shaped by `output` as `response`); for a `for_each`, the list in item
order, null where a child did not succeed, `tolerate` as for calls. A child whose input
does not fit its flow fails its item, naming the field; children not ended by `timeout`
(24h) fail. A resume due by its timer reads the running children's documents: one that
has ended is taken from there (its report was lost: a store too contended, say), the
others are published again (a lost publish heals; a child already there runs nothing
twice); at most every RECHECK_S, doubling to MAX_RECHECK_S. A chain of parents deeper
than MAX_CHILD_DEPTH fails the step.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from service.engine.expressions import EvaluationError, ExpressionError, Names, compile_value
from service.engine.expressions import render_value as rendered
from service.engine.flow_spec import StepSpec
from service.engine.kinds.base import (
    DEADLINE_MARGIN_S,
    ChildRefused,
    Turn,
    ended,
    failed,
    failed_items,
    items_of,
    seconds,
    succeeded_items,
)
from service.engine.step import Step, StepKind
from service.execution import (
    MAX_CHILD_DEPTH,
    ItemResult,
    ParentRef,
    StepResult,
    StepStatus,
    Wait,
    now,
)

DEFAULT_TIMEOUT_S = 86_400.0
# Children's requests published at once (the publisher batches them): a fan-out of
# thousands goes out in groups, not one publish after another.
PUBLISH_CONCURRENCY = 100
# Children stored and published together, and how long one push goes on starting them.
START_ROUND = 1000
START_BUDGET_S = 60.0
RECHECK_S = 60.0
MAX_RECHECK_S = 3600.0
CHILDREN = uuid.UUID("4d4e3b1e-6c2a-4f0e-9a57-0c1d2b3a4f5e")  # the namespace of child ids


class Flow:
    name: StepKind = "flow"
    fields: tuple[str, ...] = ("flow",)
    options: tuple[str, ...] = ("input", "timeout")
    calls = False
    waits = True
    fans_out = True
    replayed = True  # its children's ends are stored: a resume ends it again
    scope = frozenset[str]()

    def compile(self, spec: StepSpec, names: Names, env: Mapping[str, str]) -> dict[str, Any]:
        assert spec.flow is not None
        if spec.body is not None:
            raise ExpressionError("body: a flow step makes no call; its child's input is `input`")
        each = frozenset({"item"} if spec.for_each is not None else ())
        scope = Names("input", names.roots | each, names.steps, names.flow_steps)
        return {
            "child_flow": spec.flow,
            "child_input": compile_value(spec.input, scope, env),
            "child_timeout_s": float(spec.timeout) if spec.timeout else DEFAULT_TIMEOUT_S,
        }

    async def start(self, step: Step, turn: Turn) -> StepResult:
        assert step.child_timeout_s is not None
        result, execution = turn.result, turn.execution
        chain = _chain(turn)
        if len(chain) > MAX_CHILD_DEPTH:
            deepest = " > ".join([*chain, "…"])
            return failed(result, f"flow: children nest at most {MAX_CHILD_DEPTH} deep: {deepest}")
        timeout_at = now() + timedelta(seconds=step.child_timeout_s)
        result.wait = Wait(kind="flow", timeout_at=timeout_at, run=execution.run, every_s=RECHECK_S)
        result.status, result.wake_at = StepStatus.WAITING, _recheck(result)
        if step.for_each is None:
            return await _start_one(step, turn)
        try:
            items = items_of(step, turn.scope)
        except ValueError as exc:
            return failed(result, str(exc))
        result.items = [ItemResult(status=StepStatus.RUNNING) for _ in items]
        result.output = [None] * len(items)
        previous = turn.previous
        for i in succeeded_items(previous, len(items)):  # a re-drive keeps them
            assert previous is not None and previous.items is not None
            result.items[i], result.output[i] = previous.items[i], previous.output[i]
        await _start_more(step, turn, items)
        return _judged(step, turn)

    async def resume(self, step: Step, turn: Turn) -> StepResult:
        result, wait = turn.result, turn.result.wait
        assert wait is not None and result.wake_at is not None
        due = now() >= result.wake_at
        if step.for_each is None:
            return await _resume_one(step, turn, due)
        try:
            items = items_of(step, turn.scope)
        except ValueError as exc:
            return failed(result, str(exc))
        records = result.items or []
        if len(records) != len(items):
            return failed(result, "for_each: its list changed while its children ran")
        outputs = result.output if isinstance(result.output, list) else [None] * len(items)
        result.output = outputs
        for index, record in enumerate(records):
            end = turn.execution.callbacks.get(f"{step.name}#{index}")
            if record.status == StepStatus.RUNNING and end is not None:
                outputs[index] = _took(step, turn, record, end, items[index])
        if now() >= wait.timeout_at:
            for record in records:
                if record.status == StepStatus.RUNNING:
                    record.status, record.finished_at = StepStatus.FAILED, now()
                    record.error = _late(step, record.child)
            return _judged(step, turn)
        if due:
            await _publish_again(step, turn, items)
        await _start_more(step, turn, items)
        return _judged(step, turn)

    def described(self, step: Step) -> str | None:
        assert step.child_timeout_s is not None
        return f"runs flow {step.child_flow}, at most {seconds(step.child_timeout_s)}"


async def _start_one(step: Step, turn: Turn) -> StepResult:
    assert step.child_flow is not None
    result = turn.result
    try:
        child_input = _input(step, turn, None)
        turn.tools.children.check(step.child_flow, child_input)
    except (ValueError, ChildRefused) as exc:
        return failed(result, str(exc))
    result.child = _child_id(turn, step, None)
    assert result.wait is not None
    result.wait.children = 1
    await turn.checkpoint(step.name, result)  # before the child: its end must find this
    end = await _start(step, turn, None, result.child, child_input)
    if end is not None:  # a re-driven parent's child that had succeeded: kept
        status, result.output, error = _outcome(step, turn, end, None)
        return ended(result, status, error)
    return result


async def _resume_one(step: Step, turn: Turn, due: bool) -> StepResult:
    result, wait = turn.result, turn.result.wait
    assert wait is not None
    end = turn.execution.callbacks.get(step.name)
    if end is not None:
        status, output, error = _outcome(step, turn, end, None)
        result.output = output
        return ended(result, status, error)
    if now() >= wait.timeout_at:
        return failed(result, _late(step, result.child))
    if due and result.child is not None:
        end = await turn.tools.children.end_of(result.child)
        if end is not None:  # it ended, its report lost: read from its document
            status, result.output, error = _outcome(step, turn, end, None)
            return ended(result, status, error)
        await _publish(step, turn, None, result.child, _input(step, turn, None))
        result.wake_at = _recheck(result)
    return result


async def _start_more(step: Step, turn: Turn, items: list[Any]) -> None:
    """Give children to items not started, up to `max_concurrency` running, START_ROUND
    at a time (stored, then published) for at most START_BUDGET_S of this push (and
    within its run's deadline): the items left start as the running children's ends
    resume the parent. Those whose input does not fit fail at once."""
    loop = asyncio.get_running_loop()
    stop = min(loop.time() + START_BUDGET_S, turn.deadline - DEADLINE_MARGIN_S)
    while await _start_round(step, turn, items) and loop.time() < stop:
        pass


async def _start_round(step: Step, turn: Turn, items: list[Any]) -> bool:
    """Start up to START_ROUND children; whether that many started (more may be due)."""
    assert step.child_flow is not None
    records = turn.result.items or []
    running = sum(1 for r in records if r.status == StepStatus.RUNNING and r.child is not None)
    room = min(step.max_concurrency - running, START_ROUND)
    starting: list[tuple[int, str, dict[str, Any]]] = []
    for index, record in enumerate(records):
        if len(starting) >= room:
            break
        if record.status != StepStatus.RUNNING or record.child is not None:
            continue
        record.started_at = now()
        try:
            child_input = _input(step, turn, items[index])
            turn.tools.children.check(step.child_flow, child_input)
        except (ValueError, ChildRefused) as exc:
            record.status, record.error, record.finished_at = StepStatus.FAILED, str(exc), now()
            continue
        record.child = _child_id(turn, step, index)
        starting.append((index, record.child, child_input))
    if not starting:
        return False
    wait = turn.result.wait
    assert wait is not None
    wait.children += len(starting)
    await turn.checkpoint(step.name, turn.result)  # before the children: their ends find it
    at_once = asyncio.Semaphore(PUBLISH_CONCURRENCY)

    async def one(index: int, child: str, child_input: dict[str, Any]) -> None:
        async with at_once:
            end = await _start(step, turn, index, child, child_input)
        if end is not None:  # a re-driven parent's child that had succeeded: kept
            turn.result.output[index] = _took(step, turn, records[index], end, items[index])
            wait.children -= 1  # no report of it to wait for

    await asyncio.gather(*(one(*started) for started in starting))
    return len(starting) == START_ROUND


async def _publish_again(step: Step, turn: Turn, items: list[Any]) -> None:
    """The running children that have ended taken from their documents (their report was
    lost), the others' requests published again; the next recheck further off."""
    outputs = turn.result.output
    for index, record in enumerate(turn.result.items or []):
        if record.status != StepStatus.RUNNING or record.child is None:
            continue
        end = await turn.tools.children.end_of(record.child)
        if end is not None:
            outputs[index] = _took(step, turn, record, end, items[index])
        else:
            await _publish(step, turn, index, record.child, _input(step, turn, items[index]))
    turn.result.wake_at = _recheck(turn.result)


async def _start(
    step: Step, turn: Turn, index: int | None, child: str, child_input: dict[str, Any]
) -> Any:
    """Start `child`, the child of the step (or of its item `index`): its request
    published, or in a re-driven parent's run, the child of the same item `again`
    (the end of one that had succeeded, else None)."""
    if turn.execution.run == 1:
        return await _publish(step, turn, index, child, child_input)
    assert step.child_flow is not None
    parent = _parent(turn, step, index)
    return await turn.tools.children.again(child, step.child_flow, child_input, parent)


async def _publish(
    step: Step, turn: Turn, index: int | None, child: str, child_input: dict[str, Any]
) -> None:
    """Publish the request of `child`, the child of the step (or of its item `index`)."""
    assert step.child_flow is not None
    await turn.tools.children.start(child, step.child_flow, child_input, _parent(turn, step, index))


def _judged(step: Step, turn: Turn) -> StepResult:
    """The fan-out's outcome once every item has ended; else it waits on."""
    result = turn.result
    records = result.items or []
    if any(record.status == StepStatus.RUNNING for record in records):
        return result
    errors = [f"[{i}] {r.error}" for i, r in enumerate(records) if r.status == StepStatus.FAILED]
    error = failed_items(step, len(errors), len(records), errors[0] if errors else "")
    return ended(result, StepStatus.FAILED if error else StepStatus.SUCCEEDED, error)


def _took(step: Step, turn: Turn, record: ItemResult, end: Any, item: Any) -> Any:
    """Record a child's `end` on its item; the item's output."""
    status, output, error = _outcome(step, turn, end, item)
    record.status, record.error, record.finished_at = status, error, now()
    return output


def _outcome(step: Step, turn: Turn, end: Any, item: Any) -> tuple[StepStatus, Any, str | None]:
    """A child's end as the step's (or item's) status, output and error."""
    end = end if isinstance(end, dict) else {}
    if end.get("status") != "succeeded":
        reason = end.get("error") or "no reason given"
        child = f"child {end.get('execution_id')} {end.get('status')}"
        return StepStatus.FAILED, None, f"{child}: {reason}"
    answer = end.get("result")
    if step.output is None:
        return StepStatus.SUCCEEDED, answer, None
    scope = {**turn.scope, "response": answer}
    if item is not None:
        scope["item"] = item
    try:
        return StepStatus.SUCCEEDED, rendered(step.output, scope), None
    except EvaluationError as exc:
        return StepStatus.FAILED, None, str(exc)


def _input(step: Step, turn: Turn, item: Any) -> dict[str, Any]:
    """The child's input, made from the scope (and the item); ValueError unless an object."""
    scope = turn.scope if item is None else {**turn.scope, "item": item}
    try:
        value = rendered(step.child_input, scope)
    except EvaluationError as exc:
        raise ValueError(str(exc)) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"input: expected an object for flow {step.child_flow}")
    return value


def _chain(turn: Turn) -> list[str]:
    """The ids from the root down to this execution: its children's ancestors."""
    parent = turn.execution.parent
    above = [*parent.chain, parent.execution_id] if parent is not None else []
    return [*above, turn.execution.execution_id]


def _parent(turn: Turn, step: Step, index: int | None) -> ParentRef:
    execution = turn.execution
    return ParentRef(
        execution_id=execution.execution_id,
        step=step.name,
        index=index,
        chain=_chain(turn)[:-1],
    )


def _child_id(turn: Turn, step: Step, index: int | None) -> str:
    """The same in every run of the parent: a re-drive re-drives the child it had."""
    name = f"{turn.execution.execution_id}/{step.name}/{'' if index is None else index}"
    return str(uuid.uuid5(CHILDREN, name))


def _recheck(result: StepResult) -> Any:
    """When a resume due by its timer publishes the running children again."""
    assert result.wait is not None
    every = result.wait.every_s or RECHECK_S
    result.wait.every_s = min(every * 2, MAX_RECHECK_S)
    return min(now() + timedelta(seconds=every), result.wait.timeout_at)


def _late(step: Step, child: str | None) -> str:
    assert step.child_timeout_s is not None
    within = seconds(step.child_timeout_s)
    if child is None:  # its turn never came: the others took the whole timeout
        return f"its child was not started within {within}"
    return f"child {child} did not end within {within}"

"""How a run proceeds: each step as soon as the steps it comes after are done,
everything abandoned when the execution is cancelled, and which outcomes need a
write of their own (`rides_along`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from service.engine.flow import Flow
from service.engine.kinds import KINDS
from service.engine.step import Step
from service.execution import StepResult, StepStatus

# What a step is once this run is done with it: ended, or waiting.
ENDED = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.WAITING})


class Cancelled(Exception):
    """An operator cancelled the execution."""


async def unless(cancel: asyncio.Future[None] | None, work: Coroutine[Any, Any, None]) -> None:
    """Await `work`, or abandon it (Cancelled) as soon as `cancel` is done."""
    if cancel is None:
        return await work
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task, cancel}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if cancel.done():
                raise Cancelled
    return task.result()


async def as_ready(flow: Flow, finished: set[str], run: Callable[[Step], Awaitable[bool]]) -> None:
    """Run each step not `finished` once every step it comes after has run, concurrently.

    `run` tells whether the step is done: the steps after one that waits do not start.

    A step's task is made only when it can start: nothing waits on an Event
    (memory per execution in flight, bench/). The first error is raised as itself,
    the others cancelled; after an error no step starts.
    """
    waiting = {
        step.name: len(set(step.after) - finished)
        for step in flow.steps.values()
        if step.name not in finished
    }
    try:
        async with asyncio.TaskGroup() as group:

            async def start(step: Step) -> None:
                if not await run(step):
                    return
                for name in flow.dependents[step.name]:
                    if name not in waiting:  # kept from an earlier run of another version
                        continue
                    waiting[name] -= 1
                    if waiting[name] == 0:
                        group.create_task(start(flow.steps[name]))

            for name, count in waiting.items():
                if count == 0:
                    group.create_task(start(flow.steps[name]))
    except BaseExceptionGroup as group:
        raise _first(group) from None


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error


def rides_along(flow: Flow, steps: Mapping[str, StepResult], name: str, result: StepResult) -> bool:
    """Whether an outcome is written with the run's next write, not one of its own: one
    decided again without a call if it is lost (a skipped step's, a sleep's or a
    callback's end: its answer is stored), or the run's last (no step runs, none can
    start but after a step that waits: the run's end, or its suspend, writes it)."""
    step = flow.steps[name]
    if result.status == StepStatus.SKIPPED:
        return True
    if result.status not in ENDED:
        return False
    if result.status == StepStatus.SUCCEEDED and KINDS[step.kind].replayed:
        return True  # a sleep's end, a callback's answer: the document holds them

    def held_back(other: str) -> bool:
        """Whether `other`, not started, waits behind a step that waits."""
        for before in flow.steps[other].after:
            status = result.status if before == name else _status(steps.get(before))
            if status == StepStatus.WAITING or (status is None and held_back(before)):
                return True
        return False

    for other in flow.steps:
        if other == name:
            continue
        status = _status(steps.get(other))
        if status is None and not held_back(other):
            return False  # it starts now, or after this one
        if status is not None and status not in ENDED:
            return False  # it runs
    return True


def _status(result: StepResult | None) -> StepStatus | None:
    return None if result is None else result.status

"""How a run proceeds: each step as soon as the steps it comes after are done, and
everything abandoned when the execution is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from service.engine.flow import Flow, Step


class Cancelled(Exception):
    """An operator cancelled the execution."""


async def unless(cancel: asyncio.Event | None, work: Coroutine[Any, Any, None]) -> None:
    """Await `work`, or abandon it (Cancelled) as soon as `cancel` is set."""
    if cancel is None:
        return await work
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if cancel.is_set():
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

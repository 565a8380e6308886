"""Child executions: started for a flow step (the engine's ChildStarter), their ends
reported to their parent instead of a webhook or a result-topic message.

A child is a request message like any other, published through the one publisher,
carrying `parent` (the parent's step, item and ancestors). Its input is checked
against its flow before it is published: a misfit fails its item, naming the field.
A re-driven parent asks `again` for the children of its earlier run that did not
succeed: each is re-driven (the same execution, its next run), and its end comes to
the parent's new wait. A child re-driven on its own that succeeds after its parent
ended failed or partial re-drives the parent, which takes its end.
A cancelled parent's running children are cancelled (and theirs, as each ends).
When a child ends, the handler hands it here (its delivery): its end (`status`,
`result`, `error`) is recorded for the parent by the store (`child_ended`: once,
whatever the redeliveries), which tells whether this end resumes the parent (it frees
a slot for an item not started, or it is the last of the children the step waits for:
of children ending at once on several instances, one resume). The child's result is
its flow's `result`, or, for a flow without one, its steps' outputs by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from pydantic import ValidationError

from service.backends.answers import Answer
from service.backends.store import Conflict, WaitStore
from service.engine.flow import Flow
from service.engine.kinds.base import ChildRefused
from service.errors import OrchestratorError
from service.execution import (
    TERMINAL,
    Execution,
    ExecutionStatus,
    ItemResult,
    ParentRef,
    StepResult,
    StepStatus,
)
from service.messages import RequestMessage, describe, field_errors
from service.worker.publisher import RequestPublisher
from service.worker.wakes import Wakes

log = structlog.get_logger(__name__)

# A parent that ended so follows a child re-driven on its own to success (not a cancelled one).
FOLLOWS = frozenset({ExecutionStatus.FAILED, ExecutionStatus.PARTIAL})


class Children:
    """Starts child executions and reports their ends to their parents."""

    def __init__(
        self,
        *,
        flows: Mapping[str, Flow],
        store: WaitStore,
        requests: RequestPublisher,
        wakes: Wakes,
    ) -> None:
        self._flows = flows
        self._store = store
        self._requests = requests
        self._wakes = wakes

    def check(self, flow: str, input: Any) -> None:
        found = self._flows.get(flow)
        if found is None:
            raise ChildRefused(f"flow: no flow named {flow!r} here")
        try:
            found.validate_input(input)
        except ValidationError as exc:
            raise ChildRefused(f"flow {flow}: {describe(field_errors(exc, 'input'))}") from None

    async def start(self, execution_id: str, flow: str, input: Any, parent: ParentRef) -> None:
        message = RequestMessage(execution_id=execution_id, flow=flow, input=input, parent=parent)
        await self._requests.publish(message)

    async def again(self, execution_id: str, flow: str, input: Any, parent: ParentRef) -> Any:
        child = await self._store.get(execution_id)
        if child is None:
            await self.start(execution_id, flow, input, parent)
        elif child.status == ExecutionStatus.SUCCEEDED:
            return _end(child)
        elif child.status in TERMINAL:
            try:
                await self._wakes.redrive(execution_id)
            except Conflict:  # its end is still being delivered: the item takes it as it is
                return _end(child)
        return None

    async def end_of(self, execution_id: str) -> Any:
        child = await self._store.get(execution_id)
        return _end(child) if child is not None and child.status in TERMINAL else None

    async def cancel(self, parent: Execution) -> None:
        """Cancel the children a cancelled `parent` left running (its flow steps' children,
        ended `cancelled` with it); theirs in turn as each of them ends. A child that has
        ended meanwhile is left as it is."""
        for result in parent.steps.values():
            records: list[StepResult | ItemResult] = [result, *(result.items or [])]
            for record in records:
                if record.child is None or record.status != StepStatus.CANCELLED:
                    continue
                try:
                    await self._wakes.cancel(record.child)
                except Conflict:
                    pass  # it ended meanwhile
                except OrchestratorError as exc:
                    log.warning("child not cancelled", child=record.child, reason=str(exc))

    async def ended(self, child: Execution) -> None:
        """Record the ended `child` in its parent; resume the parent if that is due."""
        parent = child.parent
        assert parent is not None
        end = _end(child)
        verdict, resume = await self._store.child_ended(parent, child.execution_id, end)
        log.info("child ended", parent=parent.execution_id, step=parent.step, answer=verdict)
        if resume is not None:
            await self._wakes.resume_soon(resume)
        elif verdict == Answer.GONE and child.run > 1 and child.status == ExecutionStatus.SUCCEEDED:
            await self._follow(parent.execution_id)

    async def _follow(self, parent_id: str) -> None:
        """A child re-driven on its own has succeeded after its parent ended without it:
        the parent, failed or partial, is re-driven, and takes the child's end (its
        other children that did not succeed are re-driven with it)."""
        parent = await self._store.get(parent_id)
        if parent is None or parent.status not in FOLLOWS:
            return
        try:
            await self._wakes.redrive(parent_id)
        except Conflict as exc:  # re-driven meanwhile, or its result still going out
            log.info("parent not re-driven after its child", parent=parent_id, reason=str(exc))


def _end(child: Execution) -> dict[str, Any]:
    """What a child's end reports to its parent."""
    return {
        "execution_id": child.execution_id,
        "status": child.status.value,
        "result": _result(child),
        "error": child.error,
    }


def _result(child: Execution) -> Any:
    if child.result is not None:
        return child.result
    return {name: step.output for name, step in child.steps.items()}

"""Waiting executions go on: due timers woken, and a callback's answer or a cancel that
resumes one at once.

`wake` asks the store for the due executions (each handed to one caller only, so
callers on several instances at once never resume one twice) and publishes their
resume: the request message of the execution, under its id, in the producer's trace
(service/worker/publisher.py). `answer` records a callback's answer (the store's
`callback_answer` decides) and `cancel` flags an execution; either resumes a waiting one
at once (a cancelled one's run ends it `cancelled` and delivers it). A resume not
published is due again after the store's REWAKE_S. `redrive` queues an ended one's next
run and publishes it. The HTTP routes (POST /executions/wake, /callbacks/{token},
/executions/{id}/cancel, /executions/{id}/redrive) only call these, and so do parents
for their children; `every` wakes in a loop where no scheduler runs (WAKE_INTERVAL_S).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from service.backends.answers import Answer
from service.backends.store import REWAKE_S, WaitStore
from service.callback_tokens import CallbackToken
from service.errors import BrokerUnavailable, OrchestratorError
from service.execution import Execution, ExecutionStatus, FlowVersion
from service.messages import RequestMessage
from service.metrics import Metrics
from service.worker.publisher import RequestPublisher

log = structlog.get_logger(__name__)

WAKE_BATCH = 500  # due executions one call resumes at most
PUBLISH_CONCURRENCY = 50


class Wakes:
    """Sends the resume of waiting executions."""

    def __init__(
        self,
        store: WaitStore,
        requests: RequestPublisher,
        metrics: Metrics,
        batch: int = WAKE_BATCH,
    ) -> None:
        self._store = store
        self._requests = requests
        self._metrics = metrics
        self._batch = batch

    async def answer(self, token: CallbackToken, body: Any) -> Answer:
        """Record `body` as the answer to the token's wait; accepted, the execution goes on."""
        verdict, execution = await self._store.answer(token, body)
        if verdict == Answer.ACCEPTED:
            assert execution is not None
            await self.resume_soon(execution)
        return verdict

    async def cancel(self, execution_id: str) -> ExecutionStatus | None:
        """Cancel it (the store's `cancel`: the status it had, None if unknown, or
        Conflict); a waiting one is resumed, so that its run ends it and delivers it."""
        before = await self._store.cancel(execution_id)
        if before == ExecutionStatus.WAITING:
            waiting = await self._store.get(execution_id)
            if waiting is not None:
                await self.resume_soon(waiting)
        return before

    async def redrive(
        self, execution_id: str, moved_to: FlowVersion | None = None
    ) -> Execution | None:
        """Queue the next run in the store (its `redrive`: None if unknown, or Conflict),
        then publish it; undone if the broker refuses (BrokerUnavailable)."""
        changed = await self._store.redrive(execution_id, moved_to)
        if changed is None:
            return None
        before, after = changed
        try:
            await self._requests.publish(RequestMessage.of(after), after.run)
        except BrokerUnavailable:
            await self._store.save(before, delivered=True)  # as it was: it can be re-driven again
            raise
        log.info("re-driven", execution_id=after.execution_id, run=after.run)
        return after

    async def resume_soon(self, execution: Execution) -> None:
        """Resume a waiting execution now (a callback answered, a cancel asked). If the
        broker refuses, its timer, which the store moved REWAKE_S ahead, resumes it."""
        if execution.status != ExecutionStatus.WAITING:
            return  # running: it resumes itself when it suspends
        try:
            await self._requests.resume(execution)
        except OrchestratorError as exc:
            log.warning(
                "resume not published; due again later",
                execution_id=execution.execution_id,
                reason=str(exc),
            )

    async def wake(self) -> int:
        """Resume up to one batch of due executions; how many resumes were published.

        BrokerUnavailable, naming how many went out, if the broker refused any: those are
        due again after REWAKE_S (their timers moved when they were handed out)."""
        due = await self._store.due(self._batch)
        at_once = asyncio.Semaphore(PUBLISH_CONCURRENCY)
        refusals: list[str] = []

        async def one(execution: Execution) -> bool:
            async with at_once:
                try:
                    await self._requests.resume(execution)
                    done = True
                except OrchestratorError as exc:
                    refusals.append(str(exc))
                    done = False
            self._metrics.wakes.add(1, {"outcome": "woken" if done else "not_published"})
            return done

        published = sum(await asyncio.gather(*(one(execution) for execution in due)))
        if due:
            log.info("waiting executions woken", woken=published, due=len(due))
        if refusals:
            raise BrokerUnavailable(
                f"{published} of {len(due)} due executions woken; the others are due again "
                f"in {REWAKE_S:g} s: {refusals[0]}"
            )
        return published

    async def every(self, interval_s: float) -> None:
        """Wake due executions every `interval_s` until cancelled (several batches when due)."""
        while True:
            try:
                while await self.wake() == self._batch:
                    pass
            except OrchestratorError as exc:
                log.warning("due executions not all woken this time", reason=str(exc))
            await asyncio.sleep(interval_s)

"""Resuming waiting executions: each due one gets a request message, through the broker.

`wake` asks the store for the due executions (each handed to one caller only, so
callers on several instances at once never resume one twice) and publishes their
resume: the request message of the execution, under its id, carrying the producer's
trace context. A resume not published is due again after the store's REWAKE_S.
POST /executions/wake calls it (Cloud Scheduler every minute on Cloud Run); `every`
calls it in a loop where no scheduler runs (WAKE_INTERVAL_S).
"""

from __future__ import annotations

import asyncio

import structlog

from service.backends.store import REWAKE_S, ExecutionStore
from service.backends.transport import Transport
from service.errors import BrokerUnavailable, OrchestratorError
from service.execution import Execution, ExecutionStatus
from service.messages import RequestMessage
from service.metrics import Metrics
from service.telemetry import MESSAGE_ATTRIBUTE

log = structlog.get_logger(__name__)

WAKE_BATCH = 500  # due executions one call resumes at most
PUBLISH_CONCURRENCY = 50


class Wakes:
    """Sends the resume of waiting executions."""

    def __init__(
        self,
        store: ExecutionStore,
        transport: Transport,
        topic: str,
        metrics: Metrics | None = None,
        batch: int = WAKE_BATCH,
    ) -> None:
        self._store = store
        self._transport = transport
        self._topic = topic
        self._metrics = metrics or Metrics()
        self._batch = batch

    async def resume(self, execution: Execution) -> None:
        """Publish the request message that resumes `execution` (BrokerUnavailable if not)."""
        message = RequestMessage.of(execution)
        attributes = message.attributes(execution.run)
        if execution.traceparent:
            attributes[MESSAGE_ATTRIBUTE] = execution.traceparent
        await self._transport.publish(self._topic, message.model_dump_json().encode(), attributes)

    async def resume_soon(self, execution: Execution) -> None:
        """Resume a waiting execution now (a callback answered, a cancel asked). If the
        broker refuses, its timer, which the store moved REWAKE_S ahead, resumes it."""
        if execution.status != ExecutionStatus.WAITING:
            return  # running: it resumes itself when it suspends
        try:
            await self.resume(execution)
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
                    await self.resume(execution)
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

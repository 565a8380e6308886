"""The worker's rules: one pushed request message in, one ack or nack out.

The flow runs inside the push request and the answer goes out when the
execution has ended (Cloud Run throttles the CPU once a response is sent).
This module is the one place that maps outcomes to answers:

    204  acked: finished and delivered, already finished, or poison (never succeeds)
    409  nacked: the same execution is running now; Pub/Sub redelivers later
    503  nacked: any other failure (broker, store, webhook, shutdown, or a bug of
         ours, logged with its reason); redelivered later

At the subscription's last delivery attempt (`deliveryAttempt` >=
PUSH_MAX_DELIVERY_ATTEMPTS) nothing is nacked but a running copy (409): a webhook
still undelivered is given up and announced on the result topic, and any other
failure ends the execution `failed` with its reason, delivered and acked.
A store write refused for good (StoreRefused) is never nacked: it fails the step,
or the execution, whose result is delivered.

A run that ends `waiting` is suspended in the store and acked, with nothing
delivered: a wake or a callback sends its resume, a request message under the
same id, through the broker (or this handler, when a callback's answer or a cancel
came while the run went on). Each execution runs its pinned flow version
(service/worker/versions.py); a message for an execution already stored is taken
even when today's flow is gone or its input no longer fits today's definition.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Coroutine
from typing import Any

import structlog
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from service.backends.store import Claim, ClaimState, RunStore
from service.engine.runner import FlowRunner
from service.errors import (
    BrokerUnavailable,
    DeliveryFailed,
    ExecutionBusy,
    OrchestratorError,
    RejectedMessage,
    ShuttingDown,
    StoreRefused,
)
from service.execution import TERMINAL, Execution, ExecutionStatus, is_execution_id
from service.messages import ExecutionRequest, PushEnvelope, describe, field_errors
from service.metrics import Metrics
from service.telemetry import MESSAGE_ATTRIBUTE, Tracing, within
from service.worker.cancels import CancelWatch
from service.worker.checkpoints import Checkpoints
from service.worker.children import Children
from service.worker.delivery import ResultDelivery
from service.worker.leases import Leases
from service.worker.versions import FlowVersions, VersionMissing
from service.worker.wakes import Wakes

log = structlog.get_logger(__name__)

ACK = 204
NACK_BUSY = 409
NACK_RETRY = 503

DEFAULT_LEASE_S = 30.0
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
# Cloud Run gives an instance 10 s between SIGTERM and SIGKILL.
DRAIN_GRACE_S = 8.0


class PushHandler:
    """Runs the execution a push message asks for, exactly once per finished result."""

    def __init__(
        self,
        *,
        versions: FlowVersions,
        store: RunStore,
        runner: FlowRunner,
        delivery: ResultDelivery,
        children: Children,
        wakes: Wakes,
        tracing: Tracing,
        metrics: Metrics,
        lease_s: float = DEFAULT_LEASE_S,
        max_delivery_attempts: int = DEFAULT_MAX_DELIVERY_ATTEMPTS,
        drain_grace_s: float = DRAIN_GRACE_S,
    ) -> None:
        self._versions = versions
        self._flows = versions.current
        self._store = store
        self._runner = runner
        self._delivery = delivery
        self._children = children
        self._wakes = wakes
        self._lease_s = lease_s
        self._max_delivery_attempts = max_delivery_attempts
        self._drain_grace_s = drain_grace_s
        self._tracing = tracing
        self._metrics = metrics
        self._instance = f"{socket.gethostname()}-{os.getpid()}"
        self._draining = False
        self._stopping: asyncio.Future[None] | None = None  # made in the loop, on first use
        self._cancels = CancelWatch(store)
        self._leases = Leases(store, lease_s)

    def drain(self) -> None:
        """The instance is stopping: take no new work, give running work a grace period."""
        self._draining = True
        self._runner.shadows.stop()
        if self._stopping is not None and not self._stopping.done():
            self._stopping.set_result(None)

    async def handle(self, envelope: PushEnvelope) -> int:
        """Process one delivery (in the producer's trace); the HTTP status that acks or nacks it."""
        attributes = envelope.message.attributes or {}
        span_attributes = {"messaging.message.id": envelope.message.message_id or ""}
        with (
            within(self._tracing.from_message(attributes)),
            self._tracing.span("push", SpanKind.CONSUMER, span_attributes) as span,
        ):
            status = await self._handle_delivery(envelope)
            if span is not None:
                span.set_attribute("http.response.status_code", status)
            return status

    async def _handle_delivery(self, envelope: PushEnvelope) -> int:
        message_id = envelope.message.message_id
        attributes = envelope.message.attributes or {}
        last = (envelope.delivery_attempt or 0) >= self._max_delivery_attempts
        with structlog.contextvars.bound_contextvars(
            message_id=message_id,
            execution_id=attributes.get("execution_id"),
            flow=attributes.get("flow"),
            delivery_attempt=envelope.delivery_attempt,
        ):
            if self._draining:
                log.warning("delivery nacked", reason="the instance is stopping", retryable=True)
                return NACK_RETRY
            try:
                message = envelope.request()
            except RejectedMessage as exc:
                return await self._rejected(exc, message_id, attributes.get("flow"), last)
            structlog.contextvars.bind_contextvars(
                execution_id=message.execution_id, flow=message.flow
            )
            try:
                return await self._handle(message, last, attributes.get(MESSAGE_ATTRIBUTE))
            except RejectedMessage as exc:
                return await self._rejected(exc, message_id, message.flow, last)
            except ExecutionBusy as exc:
                log.info("delivery nacked", reason=str(exc), retryable=True)
                return NACK_BUSY
            except Exception as exc:
                # Retryable or not, and our bugs too: never a 500, never a silent loss.
                reason = _describe(exc)
                if not last:
                    log.warning("delivery nacked", reason=reason, retryable=_retryable(exc))
                    return NACK_RETRY
                log.error("last delivery attempt failed; the execution ends failed", reason=reason)
                await self._give_up(message, reason)
                return ACK

    async def reject(
        self, exc: RejectedMessage, message_id: str | None, flow: str | None = None
    ) -> None:
        """Ack-and-report a message that can never succeed: logged, stored and published."""
        log.error("message rejected", reason=exc.reason)
        named = f"message-{message_id or 'unknown'}"  # the sender's: an id if it can be one
        execution_id = exc.execution_id or (named if is_execution_id(named) else "message-unknown")
        execution = Execution(
            execution_id=execution_id,
            flow=flow or "unknown",
            status=ExecutionStatus.RUNNING,
            input={},
        )
        execution.finish(ExecutionStatus.REJECTED, exc.reason)
        # The flow of a poison message is anybody's string: not a label unless it is ours.
        known = execution.flow if execution.flow in self._flows else "unknown"
        self._metrics.executions.add(1, {"flow": known, "status": "rejected"})
        try:
            # A bad copy must not overwrite a real execution that carries the same id.
            if exc.execution_id and await self._store.get(exc.execution_id) is None:
                await self._store.save(execution, delivered=True)
        except OrchestratorError as error:
            log.warning("rejection not stored", reason=str(error))
        await self._delivery.publish(execution)

    async def _rejected(
        self, exc: RejectedMessage, message_id: str | None, flow: str | None, last: bool
    ) -> int:
        try:
            await self.reject(exc, message_id, flow)
        except BrokerUnavailable as error:
            if not last:
                log.warning("rejection not reported yet; nacked", reason=str(error))
                return NACK_RETRY
            log.error("rejection not reported at the last delivery attempt", reason=str(error))
        return ACK

    async def _handle(self, message: ExecutionRequest, last: bool, traceparent: str | None) -> int:
        fresh = await self._fresh(message)
        fresh.traceparent = traceparent
        # Each delivery owns its lease, so two copies in one instance are told apart too.
        owner = f"{self._instance}-{uuid.uuid4().hex[:12]}"
        try:
            claim = await self._store.claim(fresh, owner, self._lease_s)
        except StoreRefused as exc:
            log.error("the execution store refused the execution", reason=str(exc))
            fresh.finish(ExecutionStatus.FAILED, str(exc))
            await self._deliver(fresh, message.webhook_url, last)
            return ACK
        if claim.state == ClaimState.RUNNING:
            raise ExecutionBusy("the execution is running or being delivered by another delivery")
        if claim.state == ClaimState.FINISHED and claim.delivered:
            log.info("duplicate delivery of a finished execution; nothing runs")
            return ACK
        assert claim.execution is not None
        claim.execution.webhook_url = claim.execution.webhook_url or message.webhook_url
        attributes = {"execution_id": message.execution_id, "run": claim.execution.run}
        with self._tracing.span(f"execution {message.flow}", attributes=attributes) as span:
            work = self._run_and_deliver(claim, message.webhook_url, last)
            async with self._runner.shadows.recorded(message.execution_id, self._store):
                await self._leased(claim.execution.execution_id, owner, work)
            if span is not None:
                span.set_attribute("status", claim.execution.status.value)
        return ACK

    async def _fresh(self, message: ExecutionRequest) -> Execution:
        """The execution `message` starts, pinned to today's flow version; RejectedMessage
        if it can never run (or names another version), unless the execution is stored
        (its own version runs: a replay of an older one is stored before it is sent)."""
        flow = self._flows.get(message.flow)
        reason = f"flow: unknown flow {message.flow!r}"
        if flow is not None and message.flow_version in (None, flow.version):
            await self._versions.keep(flow)
            try:
                fresh = message.execution(
                    ExecutionStatus.RUNNING, flow.validate_input(message.input)
                )
                fresh.flow_version = flow.version
                return fresh
            except ValidationError as exc:
                reason = describe(field_errors(exc, "input"))
        if flow is not None and message.flow_version not in (None, flow.version):
            reason = f"flow_version: {message.flow_version} is not today's version of {flow.name}"
        if await self._store.get(message.execution_id) is None:
            raise RejectedMessage(reason, message.execution_id)
        return message.execution(ExecutionStatus.RUNNING)  # it runs as stored

    async def _run_and_deliver(self, claim: Claim, webhook_url: str | None, last: bool) -> None:
        """Run the execution unless it already ended, then deliver its result once;
        a run that ends waiting is suspended, not delivered."""
        assert claim.execution is not None
        execution = claim.execution
        if claim.state == ClaimState.CLAIMED:
            try:
                flow = await self._versions.of(execution)
            except VersionMissing as exc:
                log.error("the execution's flow version cannot run", reason=str(exc))
                execution.end_running(f"not run: {exc}")
                execution.finish(ExecutionStatus.FAILED, str(exc))
                claim = Claim(ClaimState.FINISHED, execution)
        if claim.state == ClaimState.CLAIMED:
            checkpoint = Checkpoints(self._store, execution, self._store.write_window_s)
            with self._cancels.watching(execution.execution_id, claim.cancel_requested) as cancel:
                try:
                    await self._runner.run(flow, execution, checkpoint, cancel)
                finally:
                    checkpoint.close()
            if execution.status == ExecutionStatus.WAITING and await self._suspend(execution):
                return
            nowhere = execution.parent is None and not self._delivery.goes_out(
                execution, webhook_url
            )
            if nowhere:  # nowhere to go: one write ends it
                await self._save(execution, delivered=True, sent=False)
                return
            await self._save(execution)  # readable before its result arrives anywhere
        await self._deliver(execution, webhook_url, last)
        await self._save(execution, delivered=True)

    async def _deliver(self, execution: Execution, webhook_url: str | None, last: bool) -> None:
        if execution.status == ExecutionStatus.CANCELLED:
            await self._children.cancel(execution)
        if execution.parent is not None:  # a child's end goes to its parent, nowhere else
            await self._children.ended(execution)
            return
        try:
            await self._delivery.deliver(execution, webhook_url)
        except DeliveryFailed as exc:
            if not last:
                raise
            # Pub/Sub will not push this message again: the result stays stored, and the
            # result topic hears that its webhook was given up.
            log.error("result undeliverable; giving up the webhook", reason=str(exc))
            await self._delivery.publish(execution, webhook_undelivered=True)

    async def _suspend(self, execution: Execution) -> bool:
        """Store the waiting execution and end its lease; if the store refuses it for
        good, it ends failed (False: to save and deliver)."""
        try:
            resume = await self._store.suspend(execution)
        except StoreRefused as exc:
            log.error("the execution store refused the waiting execution", reason=str(exc))
            execution.end_running(f"not suspended: {exc}")
            execution.finish(ExecutionStatus.FAILED, f"not suspended: {exc}")
            return False
        if resume:  # answered or cancelled while it ran: no timer will, so it goes on now
            await self._wakes.resume_soon(execution)
        return True

    async def _save(
        self, execution: Execution, delivered: bool = False, sent: bool | None = None
    ) -> None:
        """Store the ended execution; if the store refuses it for good, it ends failed,
        unless its result was `sent` already (by default: once `delivered`)."""
        try:
            await self._store.save(execution, delivered)
        except StoreRefused as exc:
            log.error("the execution store refused the result", reason=str(exc))
            if delivered if sent is None else sent:
                return  # delivered already; a redelivery would only find it unfinished
            execution.finish(ExecutionStatus.FAILED, f"result not stored: {exc}")
            with contextlib.suppress(StoreRefused):
                await self._store.save(execution, delivered)

    async def _give_up(self, message: ExecutionRequest, reason: str) -> None:
        """End the execution `failed` with `reason` and deliver it: nothing is pushed again."""
        execution: Execution | None = None
        with contextlib.suppress(OrchestratorError):
            execution = await self._store.get(message.execution_id)
        if execution is None or execution.status == ExecutionStatus.QUEUED:
            execution = message.execution(ExecutionStatus.RUNNING)
        if execution.status not in TERMINAL:
            execution.end_running("not finished when the execution was given up")
            execution.finish(ExecutionStatus.FAILED, f"gave up at the last delivery: {reason}")
            try:  # its verdict (a cancel asked meanwhile wins) is stored before it goes out
                await self._store.save(execution)
            except Exception as exc:
                log.error("given-up execution not stored", reason=_describe(exc))
        try:
            await self._deliver(execution, message.webhook_url, last=True)
        except Exception as exc:
            log.error("result of a given-up execution not delivered", reason=_describe(exc))
        try:
            await self._store.save(execution, delivered=True)
        except Exception as exc:
            log.error("given-up execution not stored", reason=_describe(exc))

    async def _leased(self, execution_id: str, owner: str, work: Coroutine[Any, Any, None]) -> None:
        """Do `work` under a renewed lease; when the instance stops, within the grace period.

        On any failure the lease is released, so that a redelivery resumes at once.
        """
        task = asyncio.create_task(work)
        with self._leases.holding(execution_id, owner, task) as lease:
            try:
                await asyncio.wait({task, self._stopped()}, return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    grace = self._drain_grace_s
                    log.warning("instance stopping; waiting for the execution", grace_s=grace)
                    await asyncio.wait({task}, timeout=grace)
                if not task.done():
                    raise ShuttingDown("the instance stopped before the execution ended")
                if lease.lost:
                    raise ExecutionBusy("the lease was lost to another delivery")
                task.result()
            except BaseException:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                if not lease.lost:
                    await self._store.release(execution_id, owner)
                raise

    def _stopped(self) -> asyncio.Future[None]:
        """Done once the instance is draining: every run waits on this one future."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_future()
            if self._draining:
                self._stopping.set_result(None)
        return self._stopping


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return text if isinstance(exc, OrchestratorError) else f"{type(exc).__name__}: {text}"


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, OrchestratorError) and exc.retryable

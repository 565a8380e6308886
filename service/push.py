"""Push handling: one delivered request message in, one ack or nack out.

The flow runs inside the push request and the answer goes out when the
execution has ended (Cloud Run throttles the CPU once a response is sent).
This module is the one place that maps outcomes to answers:

    204  acked: finished and delivered, already finished, or poison (never succeeds)
    409  nacked: the same execution is running now; Pub/Sub redelivers later
    503  nacked: a retryable failure (broker, webhook, shutdown); redelivered later

A webhook still undelivered at the subscription's last delivery attempt
(`deliveryAttempt` >= PUSH_MAX_DELIVERY_ATTEMPTS) is logged and acked: the
result stays in the store and on the result topic.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import socket
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from service.auth import PushRefused
from service.delivery import ResultDelivery
from service.deps import components_of
from service.errors import (
    DeliveryFailed,
    ExecutionBusy,
    OrchestratorError,
    RejectedMessage,
    ShuttingDown,
    StoreUnavailable,
)
from service.flow import Flow
from service.limits import MAX_PUSH_BYTES, read_body
from service.messages import (
    Execution,
    ExecutionStatus,
    PushEnvelope,
    RequestMessage,
    StepResult,
    describe,
    field_errors,
    inline_schema,
)
from service.problems import Problem
from service.runner import FlowRunner
from service.store import Claim, ClaimState, ExecutionStore

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
        flows: Mapping[str, Flow],
        store: ExecutionStore,
        runner: FlowRunner,
        delivery: ResultDelivery,
        default_webhook_url: str | None,
        lease_s: float = DEFAULT_LEASE_S,
        max_delivery_attempts: int = DEFAULT_MAX_DELIVERY_ATTEMPTS,
        drain_grace_s: float = DRAIN_GRACE_S,
    ) -> None:
        self._flows = flows
        self._store = store
        self._runner = runner
        self._delivery = delivery
        self._default_webhook_url = default_webhook_url
        self._lease_s = lease_s
        self._max_delivery_attempts = max_delivery_attempts
        self._drain_grace_s = drain_grace_s
        self._instance = f"{socket.gethostname()}-{os.getpid()}"
        self._stopping = asyncio.Event()

    def drain(self) -> None:
        """The instance is stopping: take no new work, give running work a grace period."""
        self._stopping.set()

    async def handle(self, envelope: PushEnvelope) -> int:
        """Process one delivery; returns the HTTP status that acks (2xx) or nacks it."""
        message_id = envelope.message.message_id
        attributes = envelope.message.attributes or {}
        with structlog.contextvars.bound_contextvars(
            message_id=message_id,
            execution_id=attributes.get("execution_id"),
            flow=attributes.get("flow"),
            delivery_attempt=envelope.delivery_attempt,
        ):
            try:
                if self._stopping.is_set():
                    raise ShuttingDown("the instance is stopping")
                return await self._handle(envelope)
            except RejectedMessage as exc:
                await self.reject(exc, message_id, attributes.get("flow"))
                return ACK
            except OrchestratorError as exc:
                log.warning("delivery nacked", reason=str(exc), retryable=exc.retryable)
                return NACK_BUSY if isinstance(exc, ExecutionBusy) else NACK_RETRY

    async def reject(
        self, exc: RejectedMessage, message_id: str | None, flow: str | None = None
    ) -> None:
        """Ack-and-report a message that can never succeed: logged, stored and published."""
        log.error("message rejected", reason=exc.reason)
        execution_id = exc.execution_id or f"message-{message_id or 'unknown'}"
        execution = Execution(
            execution_id=execution_id,
            flow=flow or "unknown",
            status=ExecutionStatus.RUNNING,
            input={},
        )
        execution.finish(ExecutionStatus.REJECTED, exc.reason)
        # A bad copy must not overwrite a real execution that carries the same id.
        if exc.execution_id and await self._store.get(exc.execution_id) is None:
            await self._store.save(execution, delivered=True)
        await self._delivery.publish(execution)

    async def _handle(self, envelope: PushEnvelope) -> int:
        message = decode(envelope)
        structlog.contextvars.bind_contextvars(execution_id=message.execution_id, flow=message.flow)
        flow = self._flows.get(message.flow)
        if flow is None:
            raise RejectedMessage(f"flow: unknown flow {message.flow!r}", message.execution_id)
        try:
            flow_input = flow.validate_input(message.input)
        except ValidationError as exc:
            reason = describe(field_errors(exc, "input"))
            raise RejectedMessage(reason, message.execution_id) from None

        fresh = Execution(
            execution_id=message.execution_id,
            flow=flow.name,
            status=ExecutionStatus.RUNNING,
            input=flow_input,
        )
        # Each delivery owns its lease, so two copies in one instance are told apart too.
        owner = f"{self._instance}-{uuid.uuid4().hex[:12]}"
        claim = await self._store.claim(fresh, owner, self._lease_s)
        if claim.state == ClaimState.RUNNING:
            raise ExecutionBusy("the execution is running or being delivered by another delivery")
        if claim.state == ClaimState.FINISHED and claim.delivered:
            log.info("duplicate delivery of a finished execution; nothing runs")
            return ACK
        assert claim.execution is not None
        work = self._run_and_deliver(flow, claim, message.webhook_url, envelope.delivery_attempt)
        await self._leased(claim.execution.execution_id, owner, work)
        return ACK

    async def _run_and_deliver(
        self, flow: Flow, claim: Claim, webhook_url: str | None, delivery_attempt: int | None
    ) -> None:
        """Run the execution unless it already ended, then deliver its result once."""
        assert claim.execution is not None
        execution = claim.execution
        if claim.state == ClaimState.CLAIMED:

            async def checkpoint(name: str, result: StepResult) -> None:
                await self._store.save_step(execution.execution_id, name, result)

            await self._runner.run(flow, execution, checkpoint)
            await self._store.save(execution)
        try:
            await self._delivery.deliver(execution, webhook_url or self._default_webhook_url)
        except DeliveryFailed as exc:
            if (delivery_attempt or 0) < self._max_delivery_attempts:
                raise
            # Pub/Sub will not push this message again: the result stays stored, and the
            # result topic hears that its webhook was given up.
            log.error("result undeliverable; giving up the webhook", reason=str(exc))
            await self._delivery.publish(execution, webhook_undelivered=True)
        await self._store.save(execution, delivered=True)

    async def _leased(self, execution_id: str, owner: str, work: Coroutine[Any, Any, None]) -> None:
        """Do `work` under a renewed lease; when the instance stops, within the grace period.

        On any failure the lease is released, so that a redelivery resumes at once.
        """
        task = asyncio.create_task(work)
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lease(execution_id, owner, task, lost))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                grace = self._drain_grace_s
                log.warning("instance stopping; waiting for the execution", grace_s=grace)
                await asyncio.wait({task}, timeout=grace)
            if not task.done():
                raise ShuttingDown("the instance stopped before the execution ended")
            if lost.is_set():
                raise ExecutionBusy("the lease was lost to another delivery")
            task.result()
        except BaseException:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if not lost.is_set():
                await self._store.release(execution_id, owner)
            raise
        finally:
            keeper.cancel()
            stopping.cancel()

    async def _keep_lease(
        self, execution_id: str, owner: str, run: asyncio.Task[Any], lost: asyncio.Event
    ) -> None:
        while not run.done():
            await asyncio.sleep(self._lease_s / 3)
            try:
                renewed = await self._store.renew(execution_id, owner, self._lease_s)
            except StoreUnavailable as exc:
                # Two more tries before the lease runs out; the run goes on meanwhile.
                log.warning("lease not renewed this time", reason=str(exc))
                continue
            if not renewed:
                log.error("lease lost; stopping this run of the execution")
                lost.set()
                run.cancel()
                return


def decode(envelope: PushEnvelope) -> RequestMessage:
    """The request message inside a push envelope, strictly decoded."""
    try:
        raw = base64.b64decode(envelope.message.data, validate=True)
    except (binascii.Error, ValueError):
        raise RejectedMessage("message.data: not valid base64") from None
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RejectedMessage("message.data: not JSON") from None
    try:
        return RequestMessage.model_validate(payload)
    except ValidationError as exc:
        raise RejectedMessage(describe(field_errors(exc, "message.data"))) from None


router = APIRouter()


@router.post(
    "/pubsub/push",
    status_code=ACK,
    summary="Pub/Sub push endpoint: runs the execution, then acks (204) or nacks",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(PushEnvelope)}},
        }
    },
    responses={
        401: {"description": "missing or invalid push token"},
        403: {"description": "token of another service account"},
        409: {"description": "the execution is running now: redeliver later"},
        503: {"description": "retryable failure: redeliver later"},
    },
)
async def push(request: Request) -> Response:
    parts = components_of(request)  # not a dependency: this is the hot path
    if parts.push_auth is not None:
        try:
            await parts.push_auth.verify(request.headers.get("authorization"))
        except PushRefused as exc:
            log.warning("push refused", reason=str(exc), status_code=exc.status)
            return Response(status_code=exc.status)
    try:
        body = await read_body(request, MAX_PUSH_BYTES)
        envelope = PushEnvelope.model_validate_json(body)
    except (Problem, ValidationError) as exc:
        # Nothing can make this body valid later: ack it rather than have it pushed forever.
        await parts.push.reject(RejectedMessage(f"push envelope: {_reason(exc)}"), None)
        return Response(status_code=ACK)
    return Response(status_code=await parts.push.handle(envelope))


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return describe(field_errors(exc))
    return str(exc)

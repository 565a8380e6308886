"""Delivering an execution's result: a signed webhook (Standard Webhooks) and the result topic."""

from __future__ import annotations

import asyncio

import httpx
import structlog
from standardwebhooks.webhooks import Webhook

from service.errors import DeliveryFailed, WebhookTargetRefused
from service.messages import Execution, now
from service.retry import Attempt, RetryPolicy, parse_retry_after, with_retries
from service.targets import Target, WebhookTargets
from service.transport import Transport

log = structlog.get_logger(__name__)

WEBHOOK_RETRY = RetryPolicy(
    maximum_attempts=4,
    initial_interval=0.5,
    maximum_interval=8.0,
    retry_on=frozenset({408, 429, *range(500, 600)}),
)
WEBHOOK_ATTEMPT_TIMEOUT_S = 10.0
WEBHOOK_BUDGET_S = 45.0
GONE = 410


class ResultDelivery:
    """Sends each finished execution to its webhook and to RESULT_TOPIC."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        transport: Transport,
        targets: WebhookTargets,
        secret: str | None,
        result_topic: str | None,
    ) -> None:
        self._client = client
        self._transport = transport
        self._targets = targets
        self._signer = Webhook(secret) if secret else None
        self._result_topic = result_topic

    async def deliver(self, execution: Execution, webhook_url: str | None) -> None:
        """Deliver everywhere the result is wanted; DeliveryFailed if a retry may still help.

        The topic comes first, so that a webhook that never answers cannot keep the
        result from it; a redelivery publishes again (consumers dedupe by execution_id).
        """
        await self.publish(execution)
        if webhook_url:
            await self._send_webhook(
                webhook_url, execution.execution_id, execution.model_dump_json()
            )

    async def publish(self, execution: Execution, webhook_undelivered: bool = False) -> None:
        """Publish the document to RESULT_TOPIC, if one is set.

        `webhook_undelivered` marks the copy published when the webhook is given up.
        """
        if self._result_topic:
            attributes = {
                "execution_id": execution.execution_id,
                "flow": execution.flow,
                "status": execution.status.value,
            }
            if webhook_undelivered:
                attributes["webhook"] = "undelivered"
            await self._transport.publish(
                self._result_topic, execution.model_dump_json().encode(), attributes
            )

    async def _send_webhook(self, url: str, message_id: str, body: str) -> None:
        try:
            target = await self._targets.pin(url)
        except WebhookTargetRefused as exc:
            log.error("webhook target refused; result not sent to it", reason=str(exc))
            return
        deadline = asyncio.get_running_loop().time() + WEBHOOK_BUDGET_S

        async def attempt(number: int) -> Attempt[int]:
            outcome = await self._post(target, message_id, body)
            if not outcome.ok:
                log.warning("webhook attempt failed", attempt=number, error=outcome.error)
            return outcome

        outcome, attempts = await with_retries(WEBHOOK_RETRY, deadline, attempt)
        if outcome.value == GONE:
            log.warning("webhook endpoint gone (410); not sending again", attempts=attempts)
        elif outcome.ok:
            log.info("webhook delivered", attempts=attempts, status_code=outcome.value)
        elif outcome.retryable:
            raise DeliveryFailed(
                f"webhook not delivered after {attempts} attempts: {outcome.error}"
            )
        else:
            log.error("webhook refused the result", attempts=attempts, error=outcome.error)

    async def _post(self, target: Target, message_id: str, body: str) -> Attempt[int]:
        timestamp = now()
        headers = {
            **target.headers,
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
        }
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.sign(message_id, timestamp, body)
        try:
            # Streamed and never read: only the status matters, whatever the receiver sends.
            async with self._client.stream(
                "POST",
                target.url,
                content=body,
                headers=headers,
                extensions=target.extensions,
                timeout=WEBHOOK_ATTEMPT_TIMEOUT_S,
            ) as response:
                pass
        except httpx.TimeoutException:
            return Attempt(error="timed out", retryable=True)
        except httpx.TransportError as exc:
            return Attempt(error=f"{type(exc).__name__}: {exc}", retryable=True)
        status = response.status_code
        if response.is_success or status == GONE:
            return Attempt(value=status)
        return Attempt(
            value=status,
            error=f"HTTP {status}",
            # A redirect is a failure (never followed: it could point anywhere) and may be fixed.
            retryable=status in WEBHOOK_RETRY.retry_on or response.is_redirect,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )

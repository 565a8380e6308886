"""Delivering an execution's result: a signed webhook (Standard Webhooks) and the result topic.

What goes out is the execution document, or, for a flow with `result:`, the
summary with that result and the `status_url` of the whole document. One bigger
than its channel (Pub/Sub's 10 MB, WEBHOOK_MAX_BYTES) goes out without step
outputs and result, with `"outputs": "omitted"` and its `status_url` (and the
same as attributes on the topic): the whole document stays readable there.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import structlog
from opentelemetry.trace import SpanKind, StatusCode
from standardwebhooks.webhooks import Webhook

from service.backends.transport import MAX_MESSAGE_BYTES, Transport
from service.bounds import MAX_PAYLOAD_BYTES
from service.errors import DeliveryFailed, WebhookTargetRefused
from service.execution import Execution, ExecutionResult, now
from service.metrics import Metrics
from service.retry import Attempt, RetryPolicy, parse_retry_after, with_retries
from service.telemetry import Tracing, outgoing_headers
from service.worker.targets import Target, WebhookTargets

log = structlog.get_logger(__name__)

WEBHOOK_RETRY = RetryPolicy(
    maximum_attempts=4,
    initial_interval=0.5,
    maximum_interval=8.0,
    retry_on=frozenset({408, 429, *range(500, 600)}),
)
# Each attempt ends within its timeout, whatever the receiver sends or how slowly, and
# all of them within the budget: a webhook holds a push (and its lease) no longer.
WEBHOOK_ATTEMPT_TIMEOUT_S = 10.0
WEBHOOK_BUDGET_S = 45.0
GONE = 410
DEFAULT_WEBHOOK_MAX_BYTES = MAX_PAYLOAD_BYTES
# Room for the attributes and the request around a result's data in one publish.
RESULT_MAX_BYTES = MAX_MESSAGE_BYTES - 16_384


class ResultDelivery:
    """Sends each finished execution to its webhook and to RESULT_TOPIC."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        transport: Transport,
        targets: WebhookTargets,
        secret: str | None,
        result_topic: str | None,
        tracing: Tracing,
        metrics: Metrics,
        webhook_max_bytes: int = DEFAULT_WEBHOOK_MAX_BYTES,
        public_url: str | None = None,
        default_webhook_url: str | None = None,
        shaped_flows: frozenset[str] = frozenset(),
        attempt_timeout_s: float = WEBHOOK_ATTEMPT_TIMEOUT_S,
        budget_s: float = WEBHOOK_BUDGET_S,
    ) -> None:
        self._client = client
        self._attempt_timeout_s = attempt_timeout_s
        self._budget_s = budget_s
        self._tracing = tracing
        self._metrics = metrics
        self._transport = transport
        self._targets = targets
        self._signer = Webhook(secret) if secret else None
        self._result_topic = result_topic
        self._webhook_max_bytes = webhook_max_bytes
        self._public_url = (public_url or "").rstrip("/")
        self._default_webhook_url = default_webhook_url
        self._shaped_flows = shaped_flows  # the flows with `result:`

    def webhook_of(self, execution: Execution, given: str | None) -> str | None:
        """Where its webhook goes: the URL `given` with its request, else DEFAULT_WEBHOOK_URL;
        a replay's only to one given (the receivers of results would act on it)."""
        return given or (self._default_webhook_url if execution.replay_of is None else None)

    def goes_out(self, execution: Execution, given: str | None) -> bool:
        """Whether its result is sent anywhere: a webhook, or the result topic."""
        return bool(self.webhook_of(execution, given) or self._topic_of(execution))

    async def deliver(self, execution: Execution, given: str | None) -> None:
        """Deliver everywhere the result is wanted (`given`: its request's webhook URL);
        DeliveryFailed if a retry may still help.

        The topic comes first, so that a webhook that never answers cannot keep the
        result from it; a redelivery publishes again (consumers dedupe by execution_id).
        """
        body = self._body(execution)
        await self.publish(execution, body=body)
        webhook_url = self.webhook_of(execution, given)
        if webhook_url:
            webhook_body, _ = self._fitted(execution, body, self._webhook_max_bytes)
            await self._send_webhook(webhook_url, execution.webhook_id, webhook_body.decode())

    async def publish(
        self, execution: Execution, webhook_undelivered: bool = False, body: bytes | None = None
    ) -> None:
        """Publish the document (`body`, if already serialized) to RESULT_TOPIC, if one is set.

        `webhook_undelivered` marks the copy published when the webhook is given up.
        """
        topic = self._topic_of(execution)
        if topic is None:
            return
        data, omitted = self._fitted(execution, body or self._body(execution), RESULT_MAX_BYTES)
        attributes = {
            "execution_id": execution.execution_id,
            "flow": execution.flow,
            "status": execution.status.value,
        }
        if webhook_undelivered:
            attributes["webhook"] = "undelivered"
        if omitted:
            attributes |= {"outputs": "omitted", "status_url": self._status_url(execution)}
        await self._transport.publish(topic, data, attributes)

    def _topic_of(self, execution: Execution) -> str | None:
        """RESULT_TOPIC, if one is set, but for a replay's result (see `webhook_of`)."""
        return self._result_topic if execution.replay_of is None else None

    def _body(self, execution: Execution) -> bytes:
        """The document delivered: the execution's, or its summary and `result`."""
        if execution.flow not in self._shaped_flows:
            return execution.model_dump_json().encode()
        shaped = ExecutionResult(
            **execution.summary().model_dump(),
            result=execution.result,
            status_url=self._status_url(execution),
        )
        return shaped.model_dump_json().encode()

    def _fitted(self, execution: Execution, body: bytes, limit: int) -> tuple[bytes, bool]:
        """`body`, or it without outputs and result when `body` is over `limit` bytes."""
        if len(body) <= limit:
            return body, False
        log.warning("result too big for its channel; outputs omitted", size=len(body), limit=limit)
        document = json.loads(body)
        for step in document.get("steps", {}).values():
            step["output"] = None
        document |= {
            "result": None,
            "outputs": "omitted",
            "status_url": self._status_url(execution),
        }
        return json.dumps(document, separators=(",", ":")).encode(), True

    def _status_url(self, execution: Execution) -> str:
        """Where the whole document is read: absolute when the service knows its URL."""
        return f"{self._public_url}/executions/{execution.execution_id}"

    async def _send_webhook(self, url: str, message_id: str, body: str) -> None:
        try:
            target = await self._targets.pin(url)
        except WebhookTargetRefused as exc:
            log.error("webhook target refused; result not sent to it", reason=str(exc))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._budget_s

        async def attempt(number: int) -> Attempt[int]:
            seconds = min(self._attempt_timeout_s, deadline - loop.time())
            with self._tracing.span("webhook", SpanKind.CLIENT, {"attempt": number}) as span:
                outcome = await self._post(target, message_id, body, seconds)
                if span is not None:
                    if outcome.value is not None:
                        span.set_attribute("http.response.status_code", outcome.value)
                    if not outcome.ok:
                        span.set_status(StatusCode.ERROR, outcome.error)
            self._metrics.webhook_deliveries.add(1, {"outcome": _webhook_outcome(outcome)})
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

    async def _post(
        self, target: Target, message_id: str, body: str, seconds: float
    ) -> Attempt[int]:
        timestamp = now()
        headers = {
            **outgoing_headers(),
            **target.headers,
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
        }
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.sign(message_id, timestamp, body)
        try:
            # httpx's timeout bounds each read, not the exchange: a receiver that trickles
            # its headers would hold the attempt for ever. Hence one total deadline.
            async with (
                asyncio.timeout(seconds),
                # Streamed and never read: only the status matters, whatever the body.
                self._client.stream(
                    "POST",
                    target.url,
                    content=body,
                    headers=headers,
                    extensions=target.extensions,
                    timeout=seconds,
                ) as response,
            ):
                pass
        except (TimeoutError, httpx.TimeoutException):
            return Attempt(error=f"timed out after {seconds:.3g} s", retryable=True)
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


def _webhook_outcome(attempt: Attempt[int]) -> str:
    if attempt.value == GONE:
        return "gone"
    if attempt.ok:
        return "delivered"
    return "failed" if attempt.retryable else "refused"

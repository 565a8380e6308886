"""Request messages on their way to the orchestration topic: the one publisher of them.

The front door, re-drives and wakes publish through it (so, next, will child flows and
event triggers), and each publish looks the same to a reader of traces and messages:

    span        `{topic} publish`, a PRODUCER span, with the message's attributes
    attributes  execution_id, flow, run (when past 1), and the trace context the push
                continues: the producer's own where a stored execution goes on (its
                `traceparent`: a resumed run stays in its producer's trace), else the
                publish span's

BrokerUnavailable when the broker cannot take it within its bound (PUBLISH_TIMEOUT_S).
"""

from __future__ import annotations

from opentelemetry.trace import SpanKind

from service.backends.transport import Transport
from service.execution import Execution
from service.messages import RequestMessage
from service.telemetry import MESSAGE_ATTRIBUTE, Tracing, message_attributes


class RequestPublisher:
    """Publishes request messages to the orchestration topic."""

    def __init__(self, transport: Transport, topic: str, tracing: Tracing) -> None:
        self._transport = transport
        self._topic = topic
        self._tracing = tracing

    async def publish(
        self, message: RequestMessage, run: int = 1, traceparent: str | None = None
    ) -> None:
        """Hand `message` (of run `run`) to the broker, in `traceparent`'s trace if given."""
        attributes = message.attributes(run)
        with self._tracing.span(f"{self._topic} publish", SpanKind.PRODUCER, attributes):
            carried = {MESSAGE_ATTRIBUTE: traceparent} if traceparent else message_attributes()
            data = message.model_dump_json().encode()
            await self._transport.publish(self._topic, data, attributes | carried)

    async def resume(self, execution: Execution) -> None:
        """The request message that runs `execution` (again), in its producer's trace."""
        await self.publish(RequestMessage.of(execution), execution.run, execution.traceparent)

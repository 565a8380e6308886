"""The orchestrator's errors, in one tree.

    OrchestratorError                 (retryable: may a later delivery succeed?)
    ├── ConfigError                   no: bad settings or flow; stops start-up
    │   └── FlowError                 no: a flow file is invalid (names file and step)
    ├── RejectedMessage               no: a push message that can never succeed (poison)
    ├── UnknownFlow                   no: a request names a flow that is not loaded
    ├── WebhookTargetRefused          no: a webhook URL points somewhere it must not
    ├── ExecutionBusy                 yes: the execution is running elsewhere now
    ├── BrokerUnavailable             yes: the broker cannot take or give a message
    ├── StoreUnavailable              yes: the execution store cannot be read or written
    ├── StoreRefused                  no: the store refused a write no retry can fix
    ├── DeliveryFailed                yes: the result could not be delivered yet
    └── ShuttingDown                  yes: the instance stops before the execution ends

The push handler maps them to an answer in one place: a retryable error is a
nack (Pub/Sub redelivers), anything else is acked. Failures of ML calls are not
errors of this tree: they are step outcomes recorded in the execution document.
A refused store write fails the step or the execution, whose result is still
delivered; an error outside this tree nacks, and ends the execution `failed` at
the subscription's last delivery attempt.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base of every error the orchestrator raises on purpose."""

    retryable: bool = False


class ConfigError(OrchestratorError):
    """A setting or flow is missing or invalid; the service cannot start."""


class FlowError(ConfigError):
    """A flow definition is invalid."""

    def __init__(self, file: str, reason: str, step: str | None = None) -> None:
        self.file, self.step, self.reason = file, step, reason
        where = f"{file}, step {step!r}" if step else file
        super().__init__(f"invalid flow {where}: {reason}")


class RejectedMessage(OrchestratorError):
    """A message that no redelivery can fix: acked, logged and reported."""

    def __init__(self, reason: str, execution_id: str | None = None) -> None:
        self.reason, self.execution_id = reason, execution_id
        super().__init__(reason)


class UnknownFlow(OrchestratorError):
    """The request names a flow that is not loaded."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown flow {name!r}")


class WebhookTargetRefused(OrchestratorError):
    """A webhook URL is not an allowed target (scheme, credentials, private address)."""


class ExecutionBusy(OrchestratorError):
    """Another delivery of the same execution is running now."""

    retryable = True


class BrokerUnavailable(OrchestratorError):
    """Publishing to or reaching the broker failed."""

    retryable = True


class StoreUnavailable(OrchestratorError):
    """Reading or writing the execution store failed."""

    retryable = True


class StoreRefused(OrchestratorError):
    """The store refused a write for good (invalid, too large): retrying cannot help."""


class DeliveryFailed(OrchestratorError):
    """The result reached neither its webhook nor its topic after the retries."""

    retryable = True


class ShuttingDown(OrchestratorError):
    """The instance is stopping; the execution must be redelivered elsewhere."""

    retryable = True

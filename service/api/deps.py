"""FastAPI dependencies: the parts built in the lifespan, reached from a request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

if TYPE_CHECKING:
    from service.api.inbound_auth import OperatorAccess, TokenAuth
    from service.backends.store import OperatorStore
    from service.backends.transport import Transport
    from service.engine.calls import MLCaller
    from service.engine.flow import Flow
    from service.engine.quotas import Quotas
    from service.metrics import Metrics
    from service.settings import Settings
    from service.telemetry import Tracing
    from service.worker.handler import PushHandler
    from service.worker.publisher import RequestPublisher
    from service.worker.targets import WebhookTargets
    from service.worker.wakes import Wakes


@dataclass(frozen=True, slots=True)
class Components:
    """Everything a request may need, made once per app start."""

    settings: Settings
    flows: dict[str, Flow]
    transport: Transport
    store: OperatorStore
    targets: WebhookTargets
    push: PushHandler
    push_auth: TokenAuth | None
    operators: OperatorAccess
    tracing: Tracing
    metrics: Metrics
    requests: RequestPublisher
    wakes: Wakes
    quotas: Quotas
    caller: MLCaller


def components_of(request: Request) -> Components:
    """The parts, for the hot endpoints: solving dependencies was a quarter of their CPU."""
    parts: Components = request.app.state.components
    return parts


async def components(request: Request) -> Components:
    # async: FastAPI runs a plain `def` dependency in a worker thread, per request.
    return components_of(request)


ComponentsDep = Annotated[Components, Depends(components)]

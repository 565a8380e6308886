"""The engine (and the whole app's parts) as a test wants them: every collaborator given,
the ones a test does not name made in memory (no tokens, no exporter, a cache and limits
of this process only)."""

from __future__ import annotations

from typing import Any

import httpx

from service.api.deps import Components
from service.app import build
from service.backends.memory import MemoryStore
from service.backends.store import ExecutionStore
from service.backends.transport import Transport
from service.engine.caching import StepCache
from service.engine.calls import DEFAULT_PER_HOST_LIMIT, MLCaller
from service.engine.flow import Flow
from service.engine.kinds.base import DEFAULT_INLINE_WAIT_S, ChildStarter, NoChildren, Tools
from service.engine.outbound import Sender
from service.engine.outbound_auth import NoTokens, TokenProvider
from service.engine.quotas import Quotas
from service.engine.runner import FlowRunner
from service.engine.shadows import Shadows
from service.metrics import Metrics
from service.settings import Settings
from service.telemetry import Tracing


def make_caller(
    sender: Sender,
    *,
    id_tokens: TokenProvider | None = None,
    access_tokens: TokenProvider | None = None,
    quotas: Quotas | None = None,
    metrics: Metrics | None = None,
    per_host_limit: int = DEFAULT_PER_HOST_LIMIT,
) -> MLCaller:
    metrics = metrics or Metrics()
    return MLCaller(
        sender,
        id_tokens=id_tokens or NoTokens(),
        access_tokens=access_tokens or NoTokens(),
        quotas=quotas or Quotas(MemoryStore(), metrics),
        tracing=Tracing(),
        metrics=metrics,
        per_host_limit=per_host_limit,
    )


def make_runner(
    caller: MLCaller,
    timeout_s: float = 30,
    *,
    cache: StepCache | None = None,
    metrics: Metrics | None = None,
    inline_wait_s: float = DEFAULT_INLINE_WAIT_S,
    children: ChildStarter | None = None,
) -> FlowRunner:
    metrics = metrics or Metrics()
    return FlowRunner(
        tools=Tools(
            caller,
            cache or StepCache(MemoryStore(), metrics),
            children or NoChildren(),
            Shadows(caller, metrics),
            inline_wait_s,
        ),
        timeout_s=timeout_s,
        tracing=Tracing(),
        metrics=metrics,
    )


def make_parts(
    settings: Settings,
    flows: dict[str, Flow],
    transport: Transport,
    store: ExecutionStore | Any,
    http: httpx.AsyncClient,
    sender: Sender,
) -> Components:
    """The app's parts, as its lifespan builds them, calling out through `sender`."""
    return build(
        settings, flows, transport, store, http, sender, tracing=Tracing(), metrics=Metrics()
    )

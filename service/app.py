"""The application: `create_app(settings)` builds it; its lifespan makes and closes the parts."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import httpx
import structlog
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from service.api import callbacks, events, frontdoor, operations, problems, push, rollouts, ui
from service.api.deps import Components, ComponentsDep
from service.api.hotpaths import HotPaths
from service.api.inbound_auth import GoogleCertificates, OperatorAccess, TokenAuth
from service.api.problems import Problem
from service.backends.memory import MemoryStore
from service.backends.pubsub import PubSubTransport
from service.backends.store import ExecutionStore
from service.backends.transport import InProcessTransport, Transport
from service.engine.caching import StepCache
from service.engine.calls import MLCaller
from service.engine.flow import Flow, check_children, check_limits, load_flows
from service.engine.kinds import KINDS
from service.engine.kinds.base import ChildStarter, Tools
from service.engine.outbound import Sender, http_clients
from service.engine.outbound_auth import (
    GoogleAccessTokens,
    GoogleIdTokens,
    NoTokens,
    TokenProvider,
)
from service.engine.quotas import Quotas
from service.engine.runner import FlowRunner
from service.engine.shadows import Shadows
from service.errors import BrokerUnavailable, ConfigError
from service.logs import configure_logging
from service.metrics import Metrics, metric_exporters_from_environment
from service.process import on_stop_signals, settle_after_start
from service.settings import MLAuth, Settings, StoreKind
from service.telemetry import TraceContext, Tracing, tracing_from_environment
from service.worker.children import Children
from service.worker.delivery import ResultDelivery
from service.worker.handler import PushHandler
from service.worker.publisher import RequestPublisher
from service.worker.targets import WebhookTargets
from service.worker.versions import FlowVersions
from service.worker.wakes import Wakes

log = structlog.get_logger(__name__)


def create_app(
    settings: Settings | None = None,
    flows: dict[str, Flow] | None = None,
    transport: Transport | None = None,
    store: ExecutionStore | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """The ASGI app. What is not given is made at start-up from the settings."""
    given = Given(settings, flows, transport, store, tracing)
    app = FastAPI(
        title="ML Orchestrator",
        summary="Runs flows of ML function calls, delivered by Pub/Sub push.",
        version="0.1.0",
        lifespan=lambda app: serving(app, given),
    )
    problems.install(app)
    app.include_router(frontdoor.router)
    app.include_router(callbacks.router)
    app.include_router(operations.router)
    app.include_router(rollouts.router)
    app.include_router(ui.router)
    app.include_router(ui.ui_root)
    app.mount("/ui/static", ui.static, name="ui-static")
    app.include_router(push.router)
    app.include_router(events.router)

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: flows loaded and the broker reachable")
    async def ready(parts: ComponentsDep) -> JSONResponse:
        try:
            await parts.transport.check(parts.settings.orchestration_topic)
        except BrokerUnavailable as exc:
            raise Problem(503, "Not ready", str(exc)) from None
        return JSONResponse({"status": "ready", "flows": sorted(parts.flows)})

    hot = {frontdoor.orchestrate, push.push, events.events}  # at their routers' paths
    routes = {
        route.path: route.endpoint
        for router in (frontdoor.router, push.router, events.router)
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint in hot
    }
    app.add_middleware(HotPaths, routes=routes)
    app.add_middleware(TraceContext)  # added last: outermost, so the hot paths run in it too
    return app


@dataclass(frozen=True, slots=True)
class Given:
    """What create_app was handed; the rest is made from the settings at start-up."""

    settings: Settings | None
    flows: dict[str, Flow] | None
    transport: Transport | None
    store: ExecutionStore | None
    tracing: Tracing | None


@asynccontextmanager
async def serving(app: FastAPI, given: Given) -> AsyncIterator[None]:
    """The app's life: its parts made and held in app.state.components while it serves,
    what runs beside the requests started, everything closed in order at the end."""
    config = given.settings or Settings.load()
    configure_logging(config.log_format, project=config.google_cloud_project)
    loaded = given.flows if given.flows is not None else load_checked_flows(config)
    broker = given.transport or make_transport(config)
    executions = given.store or make_store(config)
    traces = given.tracing or tracing_from_environment()
    metrics = Metrics(metric_exporters_from_environment())
    async with http_clients() as (http, sender):
        parts = app.state.components = build(
            config, loaded, broker, executions, http, sender, tracing=traces, metrics=metrics
        )
        log.info(
            "service started",
            transport=type(broker).__name__,
            store=type(executions).__name__,
            flows=sorted(loaded),
            orchestration_topic=config.orchestration_topic,
            pid=os.getpid(),  # one line per worker process (WEB_CONCURRENCY)
        )
        undo_signals = on_stop_signals(parts.push.drain)
        settle_after_start()
        background = beside_requests(parts, loaded, config)
        try:
            yield
        finally:
            undo_signals()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await parts.quotas.close()
            await broker.close()
            await executions.close()
            traces.shutdown()
            metrics.shutdown()


def beside_requests(
    parts: Components, flows: dict[str, Flow], settings: Settings
) -> list[asyncio.Task[None]]:
    """What runs while the app serves: the flows' tokens fetched as the instance starts
    (readiness does not wait), and the timer that wakes waiting executions."""
    steps = [step for flow in flows.values() for step in flow.steps.values()]
    calling = [step for step in steps if KINDS[step.kind].calls]
    background = [asyncio.create_task(parts.caller.warm(calling))]
    if settings.wake_every_s > 0:
        background.append(asyncio.create_task(parts.wakes.every(settings.wake_every_s)))
    return background


def load_checked_flows(settings: Settings) -> dict[str, Flow]:
    """The flows of FLOWS_DIR; ConfigError if any is invalid or DEFAULT_FLOW is missing."""
    env = settings.flow_env()
    flows: dict[str, Flow] = {}
    for folder in settings.flows_dir:
        for name, flow in load_flows(folder, env).items():
            if name in flows:
                raise ConfigError(f"FLOWS_DIR: two flows named {name!r} (one in {folder})")
            flows[name] = flow
    check_limits(flows)
    check_children(flows)
    if settings.default_flow not in flows:
        folders = os.pathsep.join(str(folder) for folder in settings.flows_dir)
        raise ConfigError(f"DEFAULT_FLOW: no flow named {settings.default_flow!r} in {folders}")
    return flows


def make_transport(settings: Settings) -> Transport:
    if settings.uses_pubsub:
        assert settings.google_cloud_project is not None
        return PubSubTransport(
            settings.google_cloud_project, emulator_host=settings.pubsub_emulator_host
        )
    return InProcessTransport()


def make_tokens(settings: Settings) -> tuple[TokenProvider, TokenProvider]:
    """ID tokens and access tokens for calls; ML_AUTH=none sends neither (local stacks)."""
    if settings.ml_auth == MLAuth.NONE:
        return NoTokens(), NoTokens()
    return GoogleIdTokens(), GoogleAccessTokens()


def make_store(settings: Settings) -> ExecutionStore:
    if settings.execution_store == StoreKind.FIRESTORE:
        from service.backends.firestore import FirestoreStore

        assert settings.google_cloud_project is not None
        return FirestoreStore(
            settings.google_cloud_project,
            settings.firestore_collection,
            timedelta(days=settings.execution_ttl_days),
            emulator_host=settings.firestore_emulator_host,
        )
    return MemoryStore()


def build(
    settings: Settings,
    flows: dict[str, Flow],
    transport: Transport,
    store: ExecutionStore,
    http: httpx.AsyncClient,
    sender: Sender,
    *,
    tracing: Tracing,
    metrics: Metrics,
) -> Components:
    """Wire the parts together."""
    targets = WebhookTargets(
        settings.webhook_allow_private_networks, settings.allowed_webhook_hosts
    )
    requests = RequestPublisher(transport, settings.orchestration_topic, tracing)
    wakes = Wakes(store, requests, metrics)
    children = Children(flows=flows, store=store, requests=requests, wakes=wakes)
    engine = make_engine(settings, store, sender, children, tracing=tracing, metrics=metrics)
    handler = PushHandler(
        versions=FlowVersions(flows, store, settings.flow_env()),
        store=store,
        runner=engine.runner,
        delivery=ResultDelivery(
            client=http,
            transport=transport,
            targets=targets,
            secret=settings.webhook_secret,
            result_topic=settings.result_topic,
            tracing=tracing,
            metrics=metrics,
            webhook_max_bytes=settings.webhook_max_bytes,
            public_url=settings.service_url,
            default_webhook_url=settings.default_webhook_url,
            shaped_flows=frozenset(name for name, flow in flows.items() if flow.result is not None),
        ),
        wakes=wakes,
        children=children,
        lease_s=settings.execution_lease_s,
        max_delivery_attempts=settings.push_max_delivery_attempts,
        tracing=tracing,
        metrics=metrics,
    )
    transport.subscribe(settings.orchestration_topic, handler.handle)
    certificates = GoogleCertificates(http, settings.push_auth_certs_url)
    push_auth = None
    if settings.push_auth_audience:
        account = settings.push_auth_service_account
        push_auth = TokenAuth(
            certificates, settings.push_auth_audience, frozenset({account}) if account else None
        )
    operator_auth = None
    if settings.operator_emails and settings.service_url:
        operator_auth = TokenAuth(certificates, settings.service_url, settings.operator_emails)
    operators = OperatorAccess(
        operator_auth, closed=operator_auth is None and push_auth is not None
    )
    parts = Components(
        settings=settings,
        flows=flows,
        transport=transport,
        store=store,
        targets=targets,
        push=handler,
        push_auth=push_auth,
        operators=operators,
        tracing=tracing,
        metrics=metrics,
        requests=requests,
        wakes=wakes,
        quotas=engine.quotas,
        caller=engine.caller,
    )
    for flow in flows.values():  # where the transport pushes itself (embedded): events too
        for trigger in flow.triggers.values():
            deliver = functools.partial(events.started, parts, flow.name, trigger.name)
            transport.subscribe(trigger.topic.rsplit("/", 1)[-1], deliver)
    return parts


@dataclass(frozen=True, slots=True)
class Engine:
    """What runs flows: the calls out, the limits they share, the runner."""

    caller: MLCaller
    quotas: Quotas
    runner: FlowRunner


def make_engine(
    settings: Settings,
    store: ExecutionStore,
    sender: Sender,
    children: ChildStarter,
    *,
    tracing: Tracing,
    metrics: Metrics,
) -> Engine:
    """The engine as the settings make it, sharing `store` (cache, limits) across instances."""
    id_tokens, access_tokens = make_tokens(settings)
    quotas = Quotas(store, metrics)
    caller = MLCaller(
        sender,
        id_tokens=id_tokens,
        access_tokens=access_tokens,
        quotas=quotas,
        tracing=tracing,
        metrics=metrics,
        per_host_limit=settings.ml_max_concurrency_per_host,
    )
    tools = Tools(
        caller=caller,
        cache=StepCache(store, metrics),
        children=children,
        shadows=Shadows(caller, metrics),
        inline_wait_s=settings.inline_wait_s,
        callback_base=settings.service_url,
    )
    runner = FlowRunner(
        tools=tools,
        timeout_s=settings.flow_timeout_s,
        tracing=tracing,
        metrics=metrics,
    )
    return Engine(caller, quotas, runner)

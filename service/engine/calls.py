"""Calls to ML functions: an ID token, a Sender (engine.outbound), retries where they can help."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from service.bounds import JSONRefused, parse_json
from service.engine.adaptive import OVERLOADED, AdaptiveLimit, Pauses
from service.engine.expressions import EvaluationError, render_value
from service.engine.outbound import NoAnswer, Sender
from service.engine.outbound_auth import NoTokens, TokenProvider
from service.engine.quotas import NoCapacity, Quota, Quotas
from service.engine.step import Step
from service.metrics import Metrics
from service.retry import Attempt, RetryBudget, parse_retry_after, with_retries
from service.telemetry import Tracing, outgoing_headers

log = structlog.get_logger(__name__)

ERROR_BODY_CHARS = 300
DEFAULT_PER_HOST_LIMIT = 100


@dataclass(frozen=True, slots=True)
class CallResult:
    """The outcome of one call after its retries."""

    output: Any
    error: str | None
    attempts: int
    cached_from: str | None = None  # from the step cache: the execution whose call made it


class MLCaller:
    """Makes a step's HTTP call with its retry policy, inside the execution's deadline.

    Each target host gets at most `per_host_limit` calls in flight from this
    instance, fewer while it answers 429 or 503 (service/engine/adaptive.py), so a
    burst of executions queues here instead of flooding one function, and a retry
    budget, so failing calls cannot multiply its load. A function's Retry-After holds
    back new calls to that function only, and never past a call's deadline.
    """

    def __init__(
        self,
        sender: Sender,
        *,
        id_tokens: TokenProvider,
        access_tokens: TokenProvider,
        quotas: Quotas,
        tracing: Tracing,
        metrics: Metrics,
        per_host_limit: int = DEFAULT_PER_HOST_LIMIT,
    ) -> None:
        self._sender = sender
        self._quotas = quotas
        # A step's `auth:` picks one: ID tokens (the default), access tokens, or none.
        self._providers: dict[str, TokenProvider] = {
            "id_token": id_tokens,
            "access_token": access_tokens,
            "none": NoTokens(),
        }
        self._tracing = tracing
        self._metrics = metrics
        self._per_host_limit = per_host_limit
        self._limits: dict[str, AdaptiveLimit] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._pauses = Pauses()

    async def warm(self, steps: Iterable[Step]) -> None:
        """Fetch the token of every audience `steps` call (steps of a kind that calls), all
        at once: on a new instance the first execution then waits for none of them, one
        step after another. A fetch that fails is tried again at the call, as any other."""
        wanted = {(step.auth, step.audience) for step in steps if step.auth != "none"}

        async def one(auth: str, audience: str) -> None:
            try:
                await self._providers[auth].headers(audience)
            except Exception as exc:  # google-auth raises several unrelated types
                log.warning("token not fetched ahead; fetched at the call", reason=str(exc))

        await asyncio.gather(*(one(auth, audience) for auth, audience in wanted))

    def paused_for(self, url: str) -> float:
        """Seconds until new calls to the function at `url` may go out (its Retry-After)."""
        return self._pauses.remaining(url)

    async def call_with(self, step: Step, scope: dict[str, Any], deadline: float) -> CallResult:
        """The step's call with its body made from `scope`; a body that cannot be made
        fails the call, with no attempt."""
        try:
            body = render_value(step.body, scope)
        except EvaluationError as exc:
            return CallResult(None, str(exc), 0)
        return await self.call(step, body, deadline)

    async def call(
        self, step: Step, body: Any, deadline: float, poll_url: str | None = None
    ) -> CallResult:
        """The step's call with `body`; with `poll_url`, a GET of its operation there."""
        loop = asyncio.get_running_loop()
        method, url = ("GET", poll_url) if poll_url is not None else (step.method, step.url)
        host = urlsplit(url).netloc
        limit = self._limits.get(host)
        if limit is None:
            limit = self._limits[host] = AdaptiveLimit(host, self._per_host_limit)
        budget = self._budgets.setdefault(host, RetryBudget())

        quota = self._quotas.of(step.limit) if step.limit else None

        async def attempt(number: int) -> Attempt[Any]:
            pause = self._pauses.remaining(url)
            if pause > 0:
                if loop.time() + pause >= deadline:
                    return Attempt(error=_paused_past(pause))
                await asyncio.sleep(pause)  # before any slot: the others go on meanwhile
            try:
                async with self._quota_slot(quota, deadline):
                    return await limited(number)
            except NoCapacity as exc:
                return Attempt(error=str(exc))

        async def limited(number: int) -> Attempt[Any]:
            async with limit.slot() as started_round:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return Attempt(error="execution deadline passed before the call")
                attributes = {"step": step.name, "attempt": number, "server.address": host}
                with self._tracing.span(f"call {step.name}", SpanKind.CLIENT, attributes) as span:
                    seconds = min(step.timeout_s, remaining)
                    outcome, status = await self._attempt(step, method, url, body, seconds)
                    if span is not None:
                        _record(span, outcome)
            if status in OVERLOADED:
                limit.overloaded(started_round)
                if outcome.retry_after:
                    self._pauses.asked(url, outcome.retry_after)
            elif outcome.ok:
                limit.succeeded()
            self._metrics.ml_calls.add(1, {"host": host, "outcome": _outcome(outcome)})
            if not outcome.ok:
                log.warning(
                    "call attempt failed",
                    step=step.name,
                    attempt=number,
                    error=outcome.error,
                    retryable=outcome.retryable,
                )
            return outcome

        outcome, attempts = await with_retries(step.retry, deadline, attempt, budget)
        if outcome.budget_refused:
            self._metrics.ml_calls.add(1, {"host": host, "outcome": "budget_refused"})
        return CallResult(output=outcome.value, error=outcome.error, attempts=attempts)

    @asynccontextmanager
    async def _quota_slot(self, quota: Quota | None, deadline: float) -> AsyncIterator[None]:
        if quota is None:
            yield
            return
        async with quota.slot(deadline):
            yield

    async def _attempt(
        self, step: Step, method: str, url: str, body: Any, seconds: float
    ) -> tuple[Attempt[Any], int | None]:
        """One try, and the HTTP status it was answered with (None: no answer)."""
        try:
            headers = await self._providers[step.auth].headers(step.audience)
        except Exception as exc:  # google-auth raises several unrelated types
            what = (
                "access token" if step.auth == "access_token" else f"ID token for {step.audience}"
            )
            return Attempt(error=f"no {what}: {exc}", retryable=True), None
        headers = {**headers, **outgoing_headers()}
        try:
            answer = await self._sender.send(method, url, body, headers, seconds)
        except NoAnswer as exc:
            return Attempt(error=str(exc), retryable=exc.retryable), None
        trace.get_current_span().set_attribute("http.response.status_code", answer.status)
        if 200 <= answer.status < 300:
            return Attempt(value=_output(answer.content)), answer.status
        text = answer.content[:ERROR_BODY_CHARS].decode(errors="replace")
        refused: Attempt[Any] = Attempt(
            error=f"HTTP {answer.status}: {text}",
            retryable=answer.status in step.retry.retry_on,
            retry_after=parse_retry_after(answer.retry_after),
            # "Too many requests": the adaptive limit paces its retry, the budget is not
            # spent. A 503 may mean the function is down: its retries stay budgeted.
            paced=answer.status == 429,
        )
        return refused, answer.status


def _paused_past(pause: float) -> str:
    return (
        f"not called: the function asked for a pause (Retry-After) that ends in {pause:.0f} s, "
        "past the execution's deadline"
    )


def _outcome(attempt: Attempt[Any]) -> str:
    if attempt.ok:
        return "success"
    return "retryable" if attempt.retryable else "final"


def _record(span: Span, outcome: Attempt[Any]) -> None:
    if not outcome.ok:
        span.set_status(StatusCode.ERROR, outcome.error)
        span.set_attribute("retryable", outcome.retryable)


def _output(content: bytes) -> Any:
    """The answer's JSON; an answer that is not strict JSON is kept as its text."""
    if not content:
        return None
    try:
        return parse_json(content)
    except JSONRefused:
        return content.decode(errors="replace")

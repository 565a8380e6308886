"""Calls to ML functions: an ID token, a Sender (engine.outbound), retries where they can help."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
from opentelemetry.trace import Span, SpanKind, StatusCode

from service.bounds import JSONRefused, parse_json
from service.engine.adaptive import OVERLOADED, AdaptiveLimit, Pauses
from service.engine.expressions import EvaluationError, render_value
from service.engine.flow_spec import PRIMARY
from service.engine.outbound import Answer, NoAnswer, Sender
from service.engine.outbound_auth import NoTokens, TokenProvider
from service.engine.quotas import NoCapacity, Quota, Quotas
from service.engine.step import Step, Variant
from service.metrics import Metrics
from service.retry import Attempt, RetryBudget, parse_retry_after, with_retries
from service.telemetry import Tracing, outgoing_headers

log = structlog.get_logger(__name__)

ERROR_BODY_CHARS = 300
DEFAULT_PER_HOST_LIMIT = 100
MAX_PLANS = 4096  # steps planned at once; past it, the plans are made again as used
NO_SLOT = nullcontext()
SHADOW = "~shadow"  # the plan of a step's shadow calls (no variant name has a "~")


@dataclass(frozen=True, slots=True)
class CallResult:
    """The outcome of one call after its retries."""

    output: Any
    error: str | None
    attempts: int
    cached_from: str | None = None  # from the step cache: the execution whose call made it
    variant: str | None = None  # a step with variants: the one called


@dataclass(frozen=True, slots=True)
class CallPlan:
    """What a step's calls need, decided once: where they go, the tokens that
    authenticate them, the host's adaptive limit and retry budget, the flow's `limit:`."""

    step: Step
    method: str
    url: str
    audience: str
    host: str
    tokens: TokenProvider
    limit: AdaptiveLimit
    budget: RetryBudget
    quota: Quota | None
    labels: dict[str, str]  # of its attempts' metric: the host (and variant, if any)


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
        self._plans: dict[tuple[int, str], CallPlan] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._pauses = Pauses()

    async def warm(self, steps: Iterable[Step]) -> None:
        """Plan each of `steps` (steps of a kind that calls) and fetch the token of every
        audience they call, all at once: on a new instance the first execution then waits
        for none of them, one step after another. A fetch that fails is tried again at
        the call, as any other."""
        plans = []
        for step in steps:
            plans += [self.plan(step), *(self.plan(step, variant=v) for v in step.variants)]
            if step.shadow is not None:
                plans.append(self.plan(step, shadow=True))
        wanted = {(plan.step.auth, plan.audience) for plan in plans}

        async def one(auth: str, audience: str) -> None:
            try:
                await self._providers[auth].headers(audience)
            except Exception as exc:  # google-auth raises several unrelated types
                log.warning("token not fetched ahead; fetched at the call", reason=str(exc))

        await asyncio.gather(*(one(auth, audience) for auth, audience in wanted if auth != "none"))

    def plan(
        self,
        step: Step,
        poll_url: str | None = None,
        variant: Variant | None = None,
        shadow: bool = False,
    ) -> CallPlan:
        """The step's calls (to `variant`, or its shadow's candidate) as decided once (kept
        while the step is); with `poll_url`, a GET of its operation there, decided for that
        call. A shadow's calls have the candidate's host limit and budget, not the step's
        `limit:`, which the calls that are used share."""
        kept = (id(step), SHADOW if shadow else variant.name if variant is not None else "")
        if poll_url is None:
            plan = self._plans.get(kept)
            if plan is not None and plan.step is step:
                return plan
        method, url = ("GET", poll_url) if poll_url is not None else (step.method, step.url)
        audience = step.audience
        if shadow:
            assert step.shadow is not None
            url, audience = step.shadow.url, step.shadow.audience
        elif variant is not None:
            url, audience = variant.url, variant.audience
        host = urlsplit(url).netloc
        limit = self._limits.get(host)
        if limit is None:
            limit = self._limits[host] = AdaptiveLimit(host, self._per_host_limit)
        plan = CallPlan(
            step=step,
            method=method,
            url=url,
            audience=audience,
            host=host,
            tokens=self._providers[step.auth],
            limit=limit,
            budget=self._budgets.setdefault(host, RetryBudget()),
            quota=self._quotas.of(step.limit) if step.limit and not shadow else None,
            labels={"host": host} if shadow else _labels(host, step, variant),
        )
        if poll_url is None:
            if len(self._plans) >= MAX_PLANS:  # steps of flow versions come and go
                self._plans.clear()
            self._plans[kept] = plan
        return plan

    def paused_for(self, url: str) -> float:
        """Seconds until new calls to the function at `url` may go out (its Retry-After)."""
        return self._pauses.remaining(url)

    async def call_with(
        self, step: Step, scope: dict[str, Any], deadline: float, variant: Variant | None = None
    ) -> CallResult:
        """The step's call (to `variant`, if given) with its body made from `scope`; a body
        that cannot be made fails the call, with no attempt."""
        try:
            body = render_value(step.body, scope)
        except EvaluationError as exc:
            return CallResult(None, str(exc), 0)
        return await self._call(self.plan(step, variant=variant), body, deadline)

    async def call(
        self,
        step: Step,
        body: Any,
        deadline: float,
        poll_url: str | None = None,
        variant: Variant | None = None,
    ) -> CallResult:
        """The step's call with `body` (to `variant`, if given); with `poll_url`, a GET of
        its operation there."""
        return await self._call(self.plan(step, poll_url, variant), body, deadline)

    async def shadow(self, step: Step, body: Any, deadline: float) -> CallResult:
        """The copy of the step's call with `body` that its shadow's candidate gets."""
        return await self._call(self.plan(step, shadow=True), body, deadline)

    async def _call(self, plan: CallPlan, body: Any, deadline: float) -> CallResult:
        """The planned call with `body`, retried as its step says."""

        async def attempt(number: int) -> Attempt[Any]:
            pause = self._pauses.remaining(plan.url)
            if pause > 0:
                if asyncio.get_running_loop().time() + pause >= deadline:
                    return Attempt(error=_paused_past(pause))
                await asyncio.sleep(pause)  # before any slot: the others go on meanwhile
            try:
                quota = plan.quota.slot(deadline) if plan.quota else NO_SLOT
                async with quota, plan.limit.slot() as started_round:
                    outcome, status = await self._attempt(plan, body, number, deadline)
            except NoCapacity as exc:
                return Attempt(error=str(exc))
            self._judged(plan, number, outcome, status, started_round)
            return outcome

        outcome, attempts = await with_retries(plan.step.retry, deadline, attempt, plan.budget)
        if outcome.budget_refused:
            self._metrics.ml_calls.add(1, plan.labels | {"outcome": "budget_refused"})
        return CallResult(output=outcome.value, error=outcome.error, attempts=attempts)

    def _judged(
        self,
        plan: CallPlan,
        number: int,
        outcome: Attempt[Any],
        status: int | None,
        started_round: int,
    ) -> None:
        """What an attempt's answer tells the host's limit, the metrics and the log."""
        if status in OVERLOADED:
            plan.limit.overloaded(started_round)
            if outcome.retry_after:
                self._pauses.asked(plan.url, outcome.retry_after)
        elif outcome.ok:
            plan.limit.succeeded()
        self._metrics.ml_calls.add(1, plan.labels | {"outcome": _outcome(outcome)})
        if not outcome.ok:
            log.warning(
                "call attempt failed",
                step=plan.step.name,
                attempt=number,
                error=outcome.error,
                retryable=outcome.retryable,
            )

    async def _attempt(
        self, plan: CallPlan, body: Any, number: int, deadline: float
    ) -> tuple[Attempt[Any], int | None]:
        """One try in its span, and the HTTP status it was answered with (None: none)."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return Attempt(error="execution deadline passed before the call"), None
        step = plan.step
        attributes = {"step": step.name, "attempt": number, "server.address": plan.host}
        with self._tracing.span(f"call {step.name}", SpanKind.CLIENT, attributes) as span:
            outcome: Attempt[Any]
            status: int | None = None
            try:
                headers = await plan.tokens.headers(plan.audience)
            except Exception as exc:  # google-auth raises several unrelated types
                outcome = Attempt(error=f"no {_token_of(plan)}: {exc}", retryable=True)
            else:
                headers = {**headers, **outgoing_headers()}
                seconds = min(step.timeout_s, remaining)
                try:
                    answer = await self._sender.send(plan.method, plan.url, body, headers, seconds)
                except NoAnswer as exc:
                    outcome = Attempt(error=str(exc), retryable=exc.retryable)
                else:
                    outcome, status = _judge_answer(step, answer), answer.status
                    if span is not None:
                        span.set_attribute("http.response.status_code", status)
            if span is not None:
                _record(span, outcome)
        return outcome, status


def _labels(host: str, step: Step, variant: Variant | None) -> dict[str, str]:
    if not step.variants:
        return {"host": host}
    return {"host": host, "variant": variant.name if variant is not None else PRIMARY}


def _token_of(plan: CallPlan) -> str:
    return "access token" if plan.step.auth == "access_token" else f"ID token for {plan.audience}"


def _judge_answer(step: Step, answer: Answer) -> Attempt[Any]:
    """A function's answer as an attempt: its JSON, or why it failed and whether to retry."""
    if 200 <= answer.status < 300:
        return Attempt(value=_output(answer.content))
    text = answer.content[:ERROR_BODY_CHARS].decode(errors="replace")
    return Attempt(
        error=f"HTTP {answer.status}: {text}",
        retryable=answer.status in step.retry.retry_on,
        retry_after=parse_retry_after(answer.retry_after),
        # "Too many requests": the adaptive limit paces its retry, the budget is not
        # spent. A 503 may mean the function is down: its retries stay budgeted.
        paced=answer.status == 429,
    )


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

"""Retry policy and backoff, spelled out once for ML calls and webhook delivery alike."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
# A Retry-After longer than this is read as this: one answer must not hold calls for hours.
MAX_RETRY_AFTER_S = 60.0


class RetryPolicy(BaseModel):
    """How often and how patiently a call is tried (temporal's vocabulary)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    maximum_attempts: int = Field(3, ge=1, le=10)
    initial_interval: float = Field(0.5, ge=0, le=60)
    backoff_coefficient: float = Field(2.0, ge=1, le=10)
    maximum_interval: float = Field(10.0, ge=0, le=300)
    retry_on: frozenset[int] = Field(RETRYABLE_STATUSES)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based): full jitter, or Retry-After."""
        ceiling = min(
            self.maximum_interval,
            self.initial_interval * self.backoff_coefficient ** (attempt - 1),
        )
        jittered = random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
        return max(jittered, retry_after) if retry_after is not None else jittered


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), at most
    MAX_RETRY_AFTER_S; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value[:12]), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), MAX_RETRY_AFTER_S)


@dataclass(frozen=True, slots=True)
class Attempt(Generic[T]):
    """What one try gave: a value, or an error and whether trying again may help."""

    value: T | None = None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None
    budget_refused: bool = False  # a retry could have helped; the target's budget said no
    # The target said it has too many requests (429) and the caller's adaptive limit
    # paces what reaches it, retries included: the retry budget is not spent on it.
    paced: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class RetryBudget:
    """Caps retries at `ratio` of first attempts (plus a small reserve), per target.

    Every first attempt deposits `ratio` of a token, every retry withdraws one,
    so when a target fails everything, retries add at most ~ratio to its load
    instead of multiplying it by the number of attempts (Finagle's RetryBudget).
    """

    def __init__(self, ratio: float = 0.2, reserve: float = 10.0) -> None:
        self._ratio = ratio
        self._reserve = reserve
        self._balance = reserve

    def record_call(self) -> None:
        self._balance = min(self._reserve, self._balance + self._ratio)

    def try_retry(self) -> bool:
        if self._balance < 1:
            return False
        self._balance -= 1
        return True


async def with_retries(
    policy: RetryPolicy,
    deadline: float,
    attempt: Callable[[int], Awaitable[Attempt[T]]],
    budget: RetryBudget | None = None,
) -> tuple[Attempt[T], int]:
    """Try `attempt(n)` until it succeeds, fails for good, runs out of tries or of time.

    `deadline` is on the event loop's clock; a wait that would end past it is not
    started, nor a retry the `budget` refuses. Returns the last attempt and how
    many were made.
    """
    loop = asyncio.get_running_loop()
    number = 1
    if budget is not None:
        budget.record_call()
    while True:
        outcome = await attempt(number)
        if outcome.ok or not outcome.retryable or number >= policy.maximum_attempts:
            return outcome, number
        delay = policy.delay(number, outcome.retry_after)
        if loop.time() + delay >= deadline:
            return outcome, number
        if budget is not None and not outcome.paced and not budget.try_retry():
            error = f"{outcome.error} (not retried: retry budget of the target spent)"
            return Attempt(value=outcome.value, error=error, budget_refused=True), number
        await asyncio.sleep(delay)
        number += 1

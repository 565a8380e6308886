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
    """Seconds from a Retry-After header (delta-seconds or HTTP date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True, slots=True)
class Attempt(Generic[T]):
    """What one try gave: a value, or an error and whether trying again may help."""

    value: T | None = None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def with_retries(
    policy: RetryPolicy, deadline: float, attempt: Callable[[int], Awaitable[Attempt[T]]]
) -> tuple[Attempt[T], int]:
    """Try `attempt(n)` until it succeeds, fails for good, runs out of tries or of time.

    `deadline` is on the event loop's clock; a wait that would end past it is not
    started. Returns the last attempt and how many were made.
    """
    loop = asyncio.get_running_loop()
    number = 1
    while True:
        outcome = await attempt(number)
        if outcome.ok or not outcome.retryable or number >= policy.maximum_attempts:
            return outcome, number
        delay = policy.delay(number, outcome.retry_after)
        if loop.time() + delay >= deadline:
            return outcome, number
        await asyncio.sleep(delay)
        number += 1

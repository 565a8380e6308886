"""A compiled step: what a flow's step is once its flow has loaded (service/engine/flow.py).

Every step has the fields of a call (`url` is empty for a kind that makes none) and
the optional fields of its own kind; which kind it is, is `kind`, and what that kind
does is its module in service/engine/kinds/.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from service.engine.expressions import Template
from service.engine.flow_spec import LimitSpec, ToleranceSpec
from service.retry import RetryPolicy


@dataclass(frozen=True, slots=True)
class Poll:
    """A compiled `poll:`: `url` and `until` read `response`, the operation's last answer."""

    url: Template
    until: Template
    every_s: float
    max_every_s: float
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Cache:
    """A compiled `cache:`: its key reads what the body reads."""

    key: Template
    ttl_s: float


@dataclass(frozen=True, slots=True)
class Variant:
    """A compiled variant: its URL and audience, and its share (percent) of the calls."""

    name: str
    url: str
    audience: str
    share: float


@dataclass(frozen=True, slots=True)
class Shadow:
    """A compiled `shadow:`: the candidate's URL and audience, the share (percent) of the
    executions whose calls it gets a copy of, how it is judged (`compare`: None, equal
    JSON) and how long its answer is waited for."""

    url: str
    audience: str
    share: float
    compare: Template | None
    timeout_s: float


def bucket(key: Any) -> int:
    """Where `key` falls among 10,000 buckets (hundredths of a percent), the same on every
    instance: how variants and shadow samples choose, sticky per key."""
    text = key if isinstance(key, str) else json.dumps(key, sort_keys=True)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000


# What a step does, decided once when its flow loads; each kind is a module of
# service/engine/kinds/, registered there by this name.
StepKind = Literal["call", "poll", "callback", "sleep", "flow"]


@dataclass(frozen=True, slots=True)
class Step:
    """A step ready to run: expressions parsed, URL resolved, its `kind` decided."""

    name: str
    kind: StepKind
    url: str
    method: str
    body: Any
    after: tuple[str, ...]
    when: Template | None
    for_each: Template | None
    max_concurrency: int
    timeout_s: float
    retry: RetryPolicy
    on_error: Literal["fail", "continue"]
    audience: str
    output: Any  # compiled; None keeps the whole answer
    auth: Literal["id_token", "access_token", "none"] = "id_token"
    poll: Poll | None = None
    callback_timeout_s: float | None = None
    sleep_s: float | None = None
    sleep_until: Template | None = None
    cache: Cache | None = None
    limit: LimitSpec | None = None
    tolerate: ToleranceSpec | None = None  # a for_each's failed items that still succeed
    child_flow: str | None = None  # a flow step's: the flow its children run
    child_input: Any = None  # compiled, like body
    child_timeout_s: float | None = None
    variants: tuple[Variant, ...] = ()  # a call's candidates, each a share of its calls
    variant_key: Template | None = None  # whose calls stick to one variant (else the execution)
    shadow: Shadow | None = None  # a candidate that gets a copy of each call, never used

    @property
    def host(self) -> str:
        """The target's host and port: the unit of per-target limits."""
        return urlsplit(self.url).netloc

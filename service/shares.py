"""Shares of a limit held by instances: how a limit on calls is split across every instance.

A limit (`limit: {key, concurrency, rate}` on steps) is enforced by each instance on
its own share, leased in the store and renewed every few seconds (the lease scheme of
Google's Doorman): no store write per call. `allot` is the one rule. An instance asks
with its demand; it gets its max-min fair share of the total among the live holders'
demands, but never more than the others leave free, and never less than what it has in
flight (already counted in its last share). So the shares never add up past the total,
an instance that wants less gives the rest back at its next renewal, and one that
stopped renewing (killed) loses its share when its lease ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Share:
    """Calls in flight and calls per second: a limit's totals, a demand, or a grant."""

    concurrency: float = 0.0
    rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Holder:
    """One instance's part of a limit: what it asked and was given, until when."""

    demand: Share
    granted: Share
    expires_at: float  # seconds since the epoch


def allot(
    total: Share,
    others: dict[str, Holder],
    demand: Share,
    in_use: Share,
    now: float,
) -> Share:
    """This instance's new grant (see the module's docstring); expired holders are ignored."""
    live = [holder for holder in others.values() if holder.expires_at > now]
    granted = []
    for dimension in ("concurrency", "rate"):
        whole = getattr(total, dimension)
        wants = [getattr(holder.demand, dimension) for holder in live]
        held = sum(getattr(holder.granted, dimension) for holder in live)
        fair = _fair_share(whole, getattr(demand, dimension), wants)
        if dimension == "concurrency":  # whole calls: a fraction of one is one, if free
            fair = float(math.ceil(fair - 1e-9))
        free = max(0.0, whole - held)
        granted.append(max(min(fair, free), getattr(in_use, dimension)))
    concurrency, rate = granted
    return Share(float(concurrency), float(rate))


def _fair_share(total: float, mine: float, others: list[float]) -> float:
    """Max-min fairness: demands under an equal split are met, the rest split evenly."""
    if mine <= 0:
        return 0.0
    left, wants = total, sorted([*others, mine])
    for index, want in enumerate(wants):
        equal = left / (len(wants) - index)
        if want >= equal:
            return min(mine, equal)
        if want == mine:
            return mine
        left -= want
    return min(mine, left)

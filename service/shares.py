"""Shares of a limit held by instances: how a limit on calls is split across every instance.

A limit (`limit: {key, concurrency, rate}` on steps) is enforced by each instance on
its own share, leased in the store and renewed every few seconds (the lease scheme of
Google's Doorman): no store write per call. `allot` is the one rule for a grant, `Ask.kept`
for what the store records of it. An instance asks with its demand; it gets its max-min
fair share of the total among the live holders' demands, but never more than the others
leave free, and never less than what it has in flight. An instance that wants less gives
the rest back (one lease later: see below), and one that stopped renewing (killed) loses
its share when its lease ends.

Why the shares never add up past the total while calls are in flight and grants move.
Leases of one limit are applied one after another (each a read of the holders and a
write conditioned on it; a lock on the memory store). Let R_i be what the store records
for instance i and C_i the calls i has in flight. After every lease, for every live
holder:

    (1)  sum of R_i <= total
    (2)  C_i <= R_i, at every moment until i's next lease

A lease by i asks with `in_use` = C_i when it is sent, and `held` = the grant G_i it
goes on applying until the answer arrives (G_i <= R_i). `allot` gives g <= max(free,
in_use), where free = total - sum of the others' R_j >= R_i by (1), and in_use <= R_i by
(2): so g <= free. The store records R_i' = max(g, held) <= free, and (1) holds. While
the lease travels, i starts calls only under G_i, so C_i <= max(C_i when sent, G_i) <=
R_i'; once the answer lands it starts calls only under g while the older ones only end,
so C_i <= max(g, C_i then) <= R_i', and (2) holds. A grant that shrank is therefore seen
by the others one lease later; the instance renews again at once to give it back.
(Recording only g, as before, let an instance that had started calls under G_i during
the round trip accept a smaller grant than it had in flight while the others were handed
the difference: peaks of 4 and 5 under `concurrency: 3`.)

The argument needs each instance to renew within its lease: one that cannot stops
starting calls when its lease runs out, counted from before it was asked (calls still in
flight then may overlap another's grant, for at most their timeout); and clocks that
agree to well under a lease (expiry times are wall-clock).
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
class Ask:
    """What an instance brings to a lease of a limit (see the module's docstring)."""

    total: Share  # the limit's totals
    demand: Share  # what its last period asked for
    in_use: Share  # its calls in flight as it asks
    held: Share  # the grant it goes on applying until the answer arrives

    def kept(self, granted: Share) -> Share:
        """What the store records for the asker: the grant, or more while `held` is."""
        return Share(
            max(granted.concurrency, self.held.concurrency), max(granted.rate, self.held.rate)
        )

    @property
    def lets_go(self) -> bool:
        """Nothing asked, nothing held: a zero grant removes the holder."""
        return self.demand == Share() and self.held == Share()


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

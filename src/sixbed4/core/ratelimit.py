"""Token buckets with caller-supplied time, so the cores stay pure and testable.

A `Budget` is what a kind of reply may cost: a rate per peer endpoint
(IPv4:port), a rate per IPv4 address and a rate in total, each with a burst.
A reply is allowed only if every level has a token, and only then are tokens
taken, so a refused reply costs nothing.  The per-IPv4 level is what keeps one
host from taking the whole budget by rotating its source port, and keeps the
whole budget from being aimed at one victim address.

Per-key buckets live in fixed-size tables: keys that hash alike share a bucket,
so memory does not grow with the number of sources an attacker can invent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """So many per second, with a burst of so many at once."""

    per_second: float
    burst: float


class _Buckets:
    """Token buckets for many keys in `slots` slots."""

    __slots__ = ("rate", "burst", "slots", "tokens", "stamps")

    def __init__(self, rate: Rate, slots: int):
        self.rate = rate.per_second
        self.burst = rate.burst
        self.slots = slots
        self.tokens = [rate.burst] * slots
        self.stamps = [0.0] * slots

    def refill(self, key, now: float) -> tuple[int, float]:
        """The key's slot and its tokens now (the refill is stored; nothing is taken)."""
        slot = hash(key) % self.slots
        tokens = self.tokens[slot] + (now - self.stamps[slot]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.tokens[slot] = tokens
        self.stamps[slot] = now
        return slot, tokens


class Budget:
    """Replies of one kind: allowed only if the total and every keyed level have a token.

    `Budget(total, per_endpoint, per_ipv4)` is asked `allow(now, (ipv4, port), ipv4)`:
    one key per keyed level, in order.  Tokens are taken only when all levels
    have one.
    """

    def __init__(self, total: Rate, *per_key: Rate, slots: int = 4096):
        self._total = _Buckets(total, 1)
        self._keyed = [_Buckets(rate, slots) for rate in per_key]

    def allow(self, now: float, *keys) -> bool:
        taken = []
        for buckets, key in zip(self._keyed, keys):
            slot, tokens = buckets.refill(key, now)
            if tokens < 1.0:
                return False
            taken.append((buckets, slot, tokens))
        slot, tokens = self._total.refill(None, now)
        if tokens < 1.0:
            return False
        taken.append((self._total, slot, tokens))
        for buckets, slot, tokens in taken:
            buckets.tokens[slot] = tokens - 1.0
        return True

"""Token buckets with caller-supplied time, so the cores stay pure and testable.

`KeyedLimiter` limits per key (e.g. per IPv4:port) in a fixed-size table: keys
that hash alike share a bucket, so memory does not grow with the number of
sources an attacker can invent, and a flood from many sources still hits the
global bucket.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = 0.0

    def allow(self, now: float) -> bool:
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


class KeyedLimiter:
    """At most `rate`/s (burst `burst`) per key and `total_rate`/s overall."""

    def __init__(self, rate: float, burst: float, total_rate: float, total_burst: float, slots: int = 4096):
        self.rate = rate
        self.burst = burst
        self.slots = slots
        self._tokens = [burst] * slots
        self._stamps = [0.0] * slots
        self.total = TokenBucket(total_rate, total_burst)

    def allow(self, key, now: float) -> bool:
        slot = hash(key) % self.slots
        tokens = self._tokens[slot] + (now - self._stamps[slot]) * self.rate
        self._stamps[slot] = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self._tokens[slot] = tokens
            return False
        if not self.total.allow(now):
            self._tokens[slot] = tokens
            return False
        self._tokens[slot] = tokens - 1.0
        return True

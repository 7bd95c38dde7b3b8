"""Budgets: token buckets per key and in total, with the time passed in."""

from __future__ import annotations

from sixbed4.core.ratelimit import Budget, Rate


def test_a_total_budget_is_a_token_bucket():
    bucket = Budget(Rate(2.0, 3.0))
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(100.4) is False  # 0.8 tokens
    assert bucket.allow(100.5) is True  # 1.0 token
    assert [bucket.allow(1000.0) for _ in range(4)] == [True, True, True, False]  # refill capped at the burst


def test_per_key_and_total():
    budget = Budget(Rate(1.0, 3.0), Rate(1.0, 2.0))  # int keys: distinct slots
    assert [budget.allow(10.0, 1) for _ in range(3)] == [True, True, False]
    assert budget.allow(10.0, 2) is True
    assert budget.allow(10.0, 3) is False  # the total is spent
    assert budget.allow(11.0, 3) is True


def test_endpoint_and_ipv4_levels():
    """Ports of one IPv4 share that IPv4's tokens; another IPv4 keeps its own."""
    budget = Budget(Rate(100.0, 100.0), Rate(1.0, 1.0), Rate(1.0, 3.0))
    allowed = [budget.allow(10.0, ("a", port), "a") for port in range(10)]
    assert allowed == [True] * 3 + [False] * 7
    assert budget.allow(10.0, ("b", 1), "b") is True
    assert budget.allow(10.0, ("b", 1), "b") is False  # b's endpoint level is spent


def test_a_refusal_takes_no_tokens():
    budget = Budget(Rate(1.0, 1.0), Rate(1.0, 5.0))
    assert budget.allow(10.0, 1) is True
    assert budget.allow(10.0, 2) is False  # the total said no ...
    assert [budget.allow(20.0, 2) for _ in range(1)] == [True]  # ... and key 2 kept its tokens

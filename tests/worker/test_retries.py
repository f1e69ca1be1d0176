"""Unit tests of the pure retry policy."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from fin_relay.contract.settings import WorkerSettings
from fin_relay.worker.retries import compute_backoff, longest_countdown_s, plan_retry


def settings(**overrides: object) -> WorkerSettings:
    return WorkerSettings(redis_url="redis://localhost:1/0", fin_api_token="t", **overrides)


@given(
    st.integers(min_value=0, max_value=500), st.floats(0.01, 5), st.floats(0.01, 60), st.integers()
)
def test_backoff_within_full_jitter_bounds(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = compute_backoff(attempt, base, cap, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2 ** max(0, attempt - 1)) + 1e-9


def test_backoff_grows_then_caps() -> None:
    rng = random.Random(1)
    means = [sum(compute_backoff(a, 0.5, 8, rng) for _ in range(2000)) / 2000 for a in (1, 2, 3, 6)]
    assert means[0] < means[1] < means[2]
    assert 3.5 < means[3] < 4.5  # uniform(0, 8)


def test_plan_gives_up_at_max_attempts() -> None:
    s = settings(fin_relay_max_attempts=3)
    rng = random.Random(0)
    assert not plan_retry(
        failures=2, hint_s=None, ambiguous_since_ms=0, now_ms=0, settings=s, rng=rng
    ).give_up
    plan = plan_retry(failures=3, hint_s=None, ambiguous_since_ms=0, now_ms=0, settings=s, rng=rng)
    assert plan.give_up and plan.reason == "max_attempts"


def test_plan_gives_up_past_deadline_from_first_ambiguous_attempt() -> None:
    s = settings(fin_relay_retry_deadline_s=10, fin_relay_backoff_max_s=5)
    rng = random.Random(0)
    plan = plan_retry(
        failures=1, hint_s=2.0, ambiguous_since_ms=0, now_ms=9_000, settings=s, rng=rng
    )
    assert plan.give_up and plan.reason == "deadline_exceeded"
    ok = plan_retry(
        failures=1, hint_s=2.0, ambiguous_since_ms=5_000, now_ms=9_000, settings=s, rng=rng
    )
    assert ok.delay_s == 2.0


def test_server_hint_capped_by_backoff_max() -> None:
    s = settings(fin_relay_backoff_max_s=4)
    plan = plan_retry(
        failures=1,
        hint_s=100.0,
        ambiguous_since_ms=None,
        now_ms=0,
        settings=s,
        rng=random.Random(0),
    )
    assert plan.delay_s == 4


def test_longest_countdown_is_below_default_visibility_timeout() -> None:
    s = settings()
    assert longest_countdown_s(s) + s.fin_relay_task_time_limit_s < s.fin_relay_visibility_timeout_s

"""Fleet-wide rate limiting with two real worker processes against the simulator."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
import redis

from tests.fixtures.worker import enqueue_job, start_kwargs, wait_for_result, wait_until

pytestmark = pytest.mark.integration


def spend_quota(sim, count: int) -> None:
    """Another app of the same workspace: authenticated calls count against the window."""
    with httpx.Client(headers={"Authorization": f"Bearer {sim.token}"}) as client:
        for _ in range(count):
            client.get(sim.base_url + "/fin/other-app")


def api_requests(sim) -> list[dict]:
    return [r for r in sim.control.requests() if r["endpoint"] is not None]


def first_429_and_reset(sim, window_s: int) -> tuple[dict, int]:
    reqs = sim.control.requests()
    hit = next(r for r in reqs if r["status"] == 429)
    return hit, (hit["time_ms"] // 1000 // window_s + 1) * window_s * 1000


@pytest.mark.parametrize("retry_after", [False, True])
def test_429_no_call_before_reset_then_success(
    retry_after: bool,
    redis_client: redis.Redis,
    fin_simulator: Callable,
    celery_worker_proc: Callable,
) -> None:
    # The simulator's quota is far below what the worker was told: Fin answers 429.
    sim = fin_simulator(rate_limit_per_minute=30, rate_limit_window_s=2, retry_after=retry_after)
    worker = celery_worker_proc(base_url=sim.base_url, concurrency=1)  # no call already in flight
    spend_quota(sim, 1)
    jobs = [enqueue_job(redis_client, "fin.start", start_kwargs(f"c429-{i}")) for i in range(3)]
    envs = [wait_for_result(redis_client, j, timeout_s=30) for j in jobs]
    assert all(e.type == "call.succeeded" for e in envs)
    hit, reset_ms = first_429_and_reset(sim, 2)
    calls = [r for r in api_requests(sim) if r["time_ms"] > hit["time_ms"]]
    assert calls, "the job was retried after the 429"
    seen = [(r["time_ms"] - reset_ms, r["status"]) for r in sim.control.requests()]
    assert min(r["time_ms"] for r in calls) >= reset_ms - 5, seen  # nothing before the reset
    assert "429 from Fin: fleet paused" in worker.logs()


def test_two_workers_quota_120_per_minute_60_jobs_zero_429(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator(rate_limit_per_minute=120)
    for _ in range(2):
        celery_worker_proc(base_url=sim.base_url, concurrency=8, rate_limit_per_minute=120)
    jobs = [enqueue_job(redis_client, "fin.start", start_kwargs(f"cq-{i}")) for i in range(60)]
    envs = [wait_for_result(redis_client, j, timeout_s=60) for j in jobs]
    assert all(e.type == "call.succeeded" for e in envs)
    reqs = api_requests(sim)
    assert [r for r in reqs if r["status"] == 429] == []
    per_window = Counter(r["time_ms"] // 10_000 for r in reqs)
    assert max(per_window.values()) <= 20, per_window
    assert len(reqs) == 60


def test_lower_remaining_from_fin_is_learned_zero_429(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    # The fleet believes it has 20 calls per window; Fin allows 15, and another app of the
    # workspace already spent 5 of this window: X-RateLimit-Remaining says less than we think.
    sim = fin_simulator(rate_limit_per_minute=90)
    for _ in range(2):
        celery_worker_proc(base_url=sim.base_url, concurrency=3, rate_limit_per_minute=120)
    wait_until(lambda: time.time() % 10 < 5, 6, "the first half of a window")
    spend_quota(sim, 5)
    jobs = [enqueue_job(redis_client, "fin.start", start_kwargs(f"cl-{i}")) for i in range(24)]
    envs = [wait_for_result(redis_client, j, timeout_s=60) for j in jobs]
    assert all(e.type == "call.succeeded" for e in envs)
    timeline = [
        (r["time_ms"] % 100_000, r["status"], r["endpoint"]) for r in sim.control.requests()
    ]
    print("TIMELINE", timeline)
    assert [r for r in sim.control.requests() if r["status"] == 429] == []
    per_window = Counter(r["time_ms"] // 10_000 for r in api_requests(sim))
    assert max(per_window.values()) <= 15, per_window


def test_429_seen_by_one_worker_stops_the_other_until_reset(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator(rate_limit_per_minute=30, rate_limit_window_s=4)  # 2 per 4-s window
    for _ in range(2):
        celery_worker_proc(base_url=sim.base_url, concurrency=1)
    wait_until(lambda: time.time() % 4 < 1.0, 5, "the start of a window")
    jobs = [enqueue_job(redis_client, "fin.start", start_kwargs(f"cs-{i}")) for i in range(6)]
    for j in jobs:
        assert wait_for_result(redis_client, j, timeout_s=40).type == "call.succeeded"
    # After a 429 in a window, at most the other worker's one request already on its way
    # reaches Fin before that window resets: nobody else calls.
    reqs = api_requests(sim)
    windows = {r["time_ms"] // 4000 for r in reqs if r["status"] == 429}
    assert windows, "the simulator answered 429 at least once"
    for window in windows:
        in_window = [r for r in reqs if r["time_ms"] // 4000 == window]
        first = next(i for i, r in enumerate(in_window) if r["status"] == 429)
        assert len(in_window[first + 1 :]) <= 1, in_window

"""Fin down for 30 s (every call answers 503): every job succeeds afterwards, and the number of
calls made during the outage is bounded by the backoff (no retry storm).

Backoff in this test: full jitter ``uniform(0, min(max, base * 2**(n-1)))`` with base 1 s and
max 30 s (``FIN_RELAY_BACKOFF_*``), 30 attempts allowed, retry deadline 240 s (the defaults
would also do; the short base keeps the test short). Per job, the expected number of attempts
within an outage of T seconds is about ``log2(2T/base) + 1`` (the mean delays 0.5, 1, 2, 4 ... s
add up to T after ``log2(2T/base + 1)`` retries), so the bound asserted is
``ceil(log2(T/base)) + 3`` attempts per job: the formula plus a margin for the jitter. The
expected value under the worker's own ``compute_backoff`` is also computed (Monte Carlo) and
reported. Without backoff a job would call thousands of times in 30 s.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from fin_relay.worker.retries import compute_backoff
from tests.fixtures.worker import enqueue_job, start_kwargs
from tests.reliability.helpers import NS, report, result_counts, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

OUTAGE_S = 30.0
JOBS = 40
BASE_S = 1.0
MAX_S = 30.0

#: Only what this test is about is changed from the defaults (and says why): a 1 s backoff base
#: (default 0.5 s) so the attempt bound is easy to state, and 30 attempts (default 8) so no job
#: gives up during the 30 s outage. Backoff max 30 s and retry deadline 240 s are the defaults.
BACKOFF_ENV = {
    "FIN_RELAY_BACKOFF_BASE_S": str(BASE_S),
    "FIN_RELAY_MAX_ATTEMPTS": "30",
}


def attempts_bound_per_job(outage_s: float, base_s: float) -> int:
    """``ceil(log2(T/base)) + 3``: the expected attempts (~log2(2T/base) + 1) plus jitter margin."""
    return math.ceil(math.log2(outage_s / base_s)) + 3


def simulated_mean_attempts(
    outage_s: float, base_s: float, max_s: float, runs: int = 5000
) -> float:
    """Mean attempts within the outage under the worker's own backoff, zero processing time."""
    rng = random.Random(8)
    counts = []
    for _ in range(runs):
        t, attempts = 0.0, 0
        while t < outage_s:
            attempts += 1
            t += compute_backoff(attempts, base_s, max_s, rng)
        counts.append(attempts)
    return statistics.mean(counts)


def test_fin_outage_all_jobs_succeed_and_calls_are_bounded_by_backoff(
    redis_url: str,
    redis_client: redis.Redis,
    sim_process: Callable[..., Any],
    worker_procs: Callable[..., Any],
) -> None:
    sim = sim_process()
    worker_procs(redis_url, base_url=sim.base_url, concurrency=8, env=BACKOFF_ENV)
    sim.control.set_faults({"*": {"outage_s": OUTAGE_S, "outage_status": 503}})
    outage_started = time.monotonic()
    jobs = [
        enqueue_job(redis_client, "fin.start", start_kwargs(f"outage-{i}"), sequence=True)
        for i in range(JOBS)
    ]
    wait_for(
        lambda: len(result_counts(redis_client)[0]) >= JOBS,
        OUTAGE_S + 2 * MAX_S + 60,
        f"{JOBS} jobs to succeed after the outage",
        step_s=0.5,
    )
    recovered_after_s = time.monotonic() - outage_started
    succeeded, types = result_counts(redis_client)
    starts = [r for r in sim.control.requests() if r["endpoint"] == "start"]
    during = [r for r in starts if r["status"] == 503]
    # the simulator refuses before reading the body, so count per job from the job hash
    per_job = {job: int(redis_client.hget(NS.job(job), "failures") or 0) for job in jobs}
    bound = attempts_bound_per_job(OUTAGE_S, BASE_S)
    expected = simulated_mean_attempts(OUTAGE_S, BASE_S, MAX_S)
    report(
        "test_fin_outage::test_fin_outage_all_jobs_succeed_and_calls_are_bounded_by_backoff",
        jobs=JOBS,
        outage_s=OUTAGE_S,
        backoff_base_s=BASE_S,
        backoff_max_s=MAX_S,
        calls_during_outage=len(during),
        bound=JOBS * bound,
        bound_per_job=bound,
        expected_per_job_monte_carlo=round(expected, 2),
        mean_calls_per_job=round(len(during) / JOBS, 2),
        max_calls_one_job=max(per_job.values(), default=0),
        all_succeeded_after_s=round(recovered_after_s, 1),
        result_types=dict(types),
    )
    assert set(succeeded) == set(jobs) and all(c == 1 for c in succeeded.values())
    assert dict(types) == {"call.succeeded": JOBS}
    assert all(n >= 1 for n in per_job.values())  # every job met the outage (proves something)
    assert sum(per_job.values()) == len(during)  # each 503 was one failed attempt of one job
    assert len(during) <= JOBS * bound, f"retry storm: {len(during)} calls > {JOBS} x {bound}"
    # after the outage each job needed exactly one more (successful, non-duplicate) call
    ok = [r for r in starts if r["status"] == 200]
    assert len(ok) == JOBS and not any(r["deduplicated"] for r in ok)

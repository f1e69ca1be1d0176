"""A worker SIGKILLed mid-call, its job redelivered after a gap longer than the retry deadline:
the job is not sent to Fin again (Fin de-duplicates a message only within 5 minutes), it ends
``call.failed`` ``outcome_unknown`` and is dead-lettered for an operator to replay on purpose.

The one setting changed is the one under test: ``FIN_RELAY_RETRY_DEADLINE_S=5`` (default 240 s),
so that the real kill-to-redelivery gap (the dead worker's broker lease running out, ~10-12 s)
is longer than the deadline without waiting four minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from tests.fixtures.worker import enqueue_job, results, start_kwargs, wait_for_result, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.redis_broker]

DEADLINE = {"FIN_RELAY_RETRY_DEADLINE_S": "5"}


def test_job_of_a_killed_worker_is_not_resent_past_the_deadline(
    redis_url: str,
    redis_client: redis.Redis,
    sim_process: Callable,
    worker_procs: Callable,
) -> None:
    sim = sim_process(faults={"start": {"latency_ms": 4000}})  # the call is in flight for 4 s
    first = worker_procs(redis_url, base_url=sim.base_url, concurrency=2, env=DEADLINE)
    job = enqueue_job(redis_client, "fin.start", start_kwargs("gap-1"))
    wait_until(lambda: len(sim.control.requests()) == 1, 20, "the call reaching Fin")
    killed_at = time.monotonic()
    first.kill()
    worker_procs(redis_url, base_url=sim.base_url, concurrency=2, env=DEADLINE)
    env = wait_for_result(redis_client, job, timeout_s=60)
    gap_s = time.monotonic() - killed_at
    assert env.type == "call.failed", env.data
    assert env.data["reason"] == "outcome_unknown"
    assert gap_s > 5  # the redelivery really came after the deadline
    assert len(sim.control.requests()) == 1  # Fin saw the message once, never again
    dead = [e for e in results(redis_client, stream="dead") if e.data.get("task_id") == job]
    assert [e.data["reason"] for e in dead] == ["outcome_unknown"]

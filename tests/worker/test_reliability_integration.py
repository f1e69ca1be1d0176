"""401 handling, kill -9 mid-call and graceful shutdown, with real worker processes."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from fin_relay.contract.names import Names
from tests.fixtures.worker import enqueue_job, results, start_kwargs, wait_for_result, wait_until

pytestmark = pytest.mark.integration
N = Names("fin")


def test_401_keeps_every_job_then_all_succeed_after_token_fix(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator(token="rotated-token")  # Fin regenerated the token
    worker = celery_worker_proc(base_url=sim.base_url, token="sim-token", concurrency=4)
    jobs = [enqueue_job(redis_client, "fin.start", start_kwargs(f"c401-{i}")) for i in range(5)]
    wait_until(lambda: redis_client.exists(N.auth_pause), 15, "the fleet-wide auth pause")
    time.sleep(2.5)  # let the fleet sit in the pause for a few probe intervals (1 s)
    assert results(redis_client) == [] and results(redis_client, stream="dead") == []
    unauthorized = [r for r in sim.control.requests() if r["status"] == 401]
    assert 1 <= len(unauthorized) <= 4 + 4  # the first calls in flight + about one probe/s
    assert "API token is wrong or was regenerated" in worker.logs()
    assert "sim-token" not in worker.logs()
    sim.control.configure(token="sim-token")  # the operator fixed it
    envs = [wait_for_result(redis_client, j, timeout_s=30) for j in jobs]
    assert all(e.type == "call.succeeded" for e in envs)
    assert not redis_client.exists(N.auth_pause)


def test_kill_9_mid_call_completes_on_another_worker_same_timestamp(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    short = {
        "FIN_RELAY_VISIBILITY_TIMEOUT_S": "5",
        "FIN_RELAY_TASK_TIME_LIMIT_S": "3.5",
        "FIN_RELAY_CONNECT_TIMEOUT_S": "1",
        "FIN_RELAY_READ_TIMEOUT_S": "2",
    }
    sim = fin_simulator()
    sim.control.set_faults({"start": {"latency_ms": 1500}})
    first = celery_worker_proc(base_url=sim.base_url, concurrency=1, env=short)
    job = enqueue_job(redis_client, "fin.start", start_kwargs("c-kill"))
    wait_until(
        lambda: any(r["endpoint"] == "start" for r in sim.control.requests()),
        15,
        "the call to reach Fin",
    )
    first.kill()
    sim.control.set_faults({})
    celery_worker_proc(base_url=sim.base_url, concurrency=1, env=short)
    env = wait_for_result(redis_client, job, timeout_s=45)
    assert env.type == "call.succeeded"

    # The killed call's log entry is completed when the simulator finishes handling it (after
    # its 1.5 s latency), which can be after the redelivered call succeeded (RabbitMQ
    # redelivers at once): wait for both entries to be complete.
    def logged_starts() -> list[dict] | None:
        starts = [r for r in sim.control.requests() if r["endpoint"] == "start"]
        complete = len(starts) >= 2 and all(r["message_timestamp"] for r in starts)
        return starts if complete else None

    starts = wait_until(logged_starts, 10, "both start calls logged with their timestamp")
    assert len(starts) == 2
    assert starts[0]["message_timestamp"] == starts[1]["message_timestamp"]
    assert starts[0]["message_timestamp"] == redis_client.hget(N.job(job), "ts")


def test_sigterm_finishes_the_call_in_flight(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    sim.control.set_faults({"start": {"latency_ms": 1500}})
    worker = celery_worker_proc(base_url=sim.base_url, concurrency=2)
    job = enqueue_job(redis_client, "fin.start", start_kwargs("c-term"))
    wait_until(
        lambda: any(r["endpoint"] == "start" for r in sim.control.requests()),
        15,
        "the call to reach Fin",
    )
    assert worker.stop(timeout_s=20) == 0
    env = wait_for_result(redis_client, job, timeout_s=1)  # published before the worker exited
    assert env.type == "call.succeeded"
    assert not redis_client.exists(N.worker_heartbeat(worker.hostname))

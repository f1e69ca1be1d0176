"""A SIGKILLed worker's jobs are finished by the other worker promptly, on the default
configuration (visibility timeout 3,600 s): every job reaches exactly one outcome within 30 s
of the kill.

Two real worker processes (``python -m celery -A fin_relay.worker.app worker``) run with the
product's defaults: none of the short test timings of ``tests/fixtures/worker.py``. Fin (the
simulator, over HTTP) answers ``/fin/start`` after 2 s, so both workers hold calls in flight
when one of them is SIGKILLed. With Redis as the broker its unacked messages are put back by
the survivor once the dead process's broker lease runs out (``fin_relay.worker.transport``,
fix 4), not after the visibility timeout; RabbitMQ redelivers a dead consumer's messages itself
when its connection drops. The recovery time (kill -> every job's outcome) is printed in a
``RELIABILITY {...}`` line.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fin_relay.contract.names import Names, broker_owner, broker_owners
from tests.fixtures.broker import purge_queues
from tests.fixtures.worker import (
    TEST_WORKER_ENV,
    WorkerProcess,
    enqueue_job,
    results,
    spawn_worker,
    start_kwargs,
    wait_ready,
    wait_until,
    worker_command,
    worker_env,
)
from tests.reliability.helpers import await_outcomes, report

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

N = Names("fin")
JOBS = 24
CONCURRENCY = 4
LATENCY_MS = 2000  # every Fin call in flight for 2 s
#: The promise, with the default configuration: a dead worker's jobs finish within 30 s.
RECOVERY_BOUND_S = 30.0


@pytest.fixture
def default_config_workers(
    redis_url: str, tmp_path: Path, test_broker_url: str | None
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: real worker processes on the product's default settings (only the connection
    settings, the token and the simulator's URL are given)."""
    started: list[WorkerProcess] = []

    def start(base_url: str) -> WorkerProcess:
        env = worker_env(redis_url, base_url, "sim-token", "fin", {})
        for key in TEST_WORKER_ENV:  # the tests' short timings: not here
            env.pop(key, None)
        if test_broker_url is not None:
            env["FIN_BROKER_URL"] = test_broker_url
            if not started:
                purge_queues(test_broker_url)
        hostname = f"dc{len(started)}-{uuid.uuid4().hex[:6]}@test"
        worker = spawn_worker(
            worker_command(hostname, "threads", CONCURRENCY, "fin.calls,fin.events"),
            env,
            tmp_path / f"worker-{len(started)}.log",
            hostname=hostname,
            namespace="fin",
        )
        started.append(worker)
        wait_ready(worker, redis_url, 60)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout_s=10)


def job_ids_of_tags(client: redis.Redis, tags: set[str]) -> set[str]:
    """The task ids (= job ids) of unacked delivery tags (kombu's record: [message, ex, rk])."""
    ids = set()
    for raw in client.hmget("unacked", sorted(tags)):
        if raw is not None:
            ids.add(str(json.loads(raw)[0]["headers"]["id"]))
    return ids


def test_sigkilled_worker_jobs_finish_within_30_s_on_the_default_configuration(
    redis_client: redis.Redis,
    fin_simulator: Callable[..., Any],
    default_config_workers: Callable[..., WorkerProcess],
    test_broker_url: str | None,
) -> None:
    sim = fin_simulator()
    sim.control.set_faults({"start": {"latency_ms": LATENCY_MS}})
    victim = default_config_workers(sim.base_url)
    survivor = default_config_workers(sim.base_url)
    on_redis = test_broker_url is None
    jobs = {
        enqueue_job(redis_client, "fin.start", start_kwargs(f"dead-consumer-{i}"), sequence=True)
        for i in range(JOBS)
    }
    # both workers busy: every slot has a call in flight at Fin
    wait_until(
        lambda: len(sim.control.requests()) >= 2 * CONCURRENCY, 60, "both workers' calls at Fin"
    )
    victim_jobs: set[str] = set()
    if on_redis:
        owner = json.loads(redis_client.get(N.worker_heartbeat(victim.hostname)) or "{}")["owner"]
        tags = wait_until(
            lambda: redis_client.smembers(broker_owner(owner)), 10, "the victim's owned messages"
        )
        victim_jobs = job_ids_of_tags(redis_client, set(tags))
        assert victim_jobs, "the victim held no job when it was killed: the test proves nothing"
    victim.kill()
    killed_at = time.monotonic()

    first_at = await_outcomes(redis_client, jobs, RECOVERY_BOUND_S + 30)
    missing = jobs - set(first_at)
    recovery_s = max(first_at.values(), default=killed_at) - killed_at
    victim_done = [first_at[j] - killed_at for j in victim_jobs if j in first_at]
    victim_recovery_s = round(max(victim_done), 1) if victim_done else None
    drained = None
    if on_redis and not missing:
        # nothing left anywhere the broker could deliver it from again: no second outcome later
        drained = wait_until(
            lambda: (
                redis_client.llen("fin.calls") == 0
                and redis_client.hlen("unacked") == 0
                and redis_client.scard(broker_owner(owner)) == 0
            ),
            30,
            "the broker drained",
        )
    everything = results(redis_client)
    per_job = Counter(str(env.data.get("job_id")) for env in everything)
    types = Counter(env.type for env in everything)
    logs = survivor.logs()
    report(
        "test_dead_consumer_integration::"
        "test_sigkilled_worker_jobs_finish_within_30_s_on_the_default_configuration",
        broker="rabbitmq" if not on_redis else "redis",
        jobs=JOBS,
        latency_ms=LATENCY_MS,
        victim_jobs_in_flight=len(victim_jobs),
        recovery_s_all_outcomes=round(recovery_s, 1),
        recovery_s_victim_jobs=victim_recovery_s,
        missing=len(missing),
        result_types=dict(types),
        put_back_lines=[line for line in logs.splitlines() if "putting its" in line][:3],
    )

    assert not missing, f"{len(missing)} job(s) without an outcome {RECOVERY_BOUND_S + 30} s later"
    assert recovery_s <= RECOVERY_BOUND_S, f"every outcome {recovery_s:.1f} s after the kill"
    assert set(per_job) == jobs and all(n == 1 for n in per_job.values()), per_job.most_common(3)
    assert dict(types) == {"call.succeeded": JOBS}
    if on_redis:
        assert drained
        # the survivor put them back (the visibility timeout is an hour away)
        assert f"worker process {owner} stopped renewing its lease" in logs
        assert owner not in redis_client.zrange(broker_owners(), 0, -1)

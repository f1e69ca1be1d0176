"""The consumption watchdog: a worker that stops consuming (Celery's known failure after a
broker reconnect) exits so its supervisor restarts it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from celery import Celery

from fin_relay.contract.names import Names, broker_owners
from fin_relay.worker.heartbeat import STUCK_EXIT_CODE, StallDetector
from tests.fixtures.worker import enqueue_job, start_kwargs, wait_until


def test_detector_needs_a_sustained_backlog_with_free_slots() -> None:
    det = StallDetector(threshold_s=10, slots=4)
    t0 = det.last_start_s
    assert not det.observe(5, t0 + 1)  # backlog seen: clock starts
    assert not det.observe(5, t0 + 8)
    assert det.observe(5, t0 + 12)  # 11 s with jobs waiting and nothing started
    det.task_started()  # a task started: not stuck any more, the clock restarts
    assert not det.observe(5, det.last_start_s + 1)
    assert not det.observe(5, det.last_start_s + 5)


def test_detector_ignores_empty_queues_busy_workers_and_zero_threshold() -> None:
    det = StallDetector(threshold_s=10, slots=1)
    t0 = det.last_start_s
    assert not det.observe(0, t0 + 100)
    det.task_started()  # the only slot is busy: waiting jobs are normal
    assert not det.observe(3, det.last_start_s + 1)
    assert not det.observe(3, det.last_start_s + 100)
    det.task_finished()
    off = StallDetector(threshold_s=0, slots=4)
    assert not off.observe(3, off.last_start_s + 1000)


@pytest.mark.integration
@pytest.mark.redis_broker
def test_worker_that_stops_consuming_exits_for_its_supervisor(
    redis_url: str, redis_client: redis.Redis, fin_simulator: Any, celery_worker_proc: Any
) -> None:
    sim = fin_simulator()
    worker = celery_worker_proc(
        base_url=sim.base_url, concurrency=2, env={"FIN_RELAY_STUCK_CONSUMER_S": "3"}
    )
    job = enqueue_job(redis_client, "fin.start", start_kwargs("wd-1"))
    wait_until(lambda: redis_client.llen("fin.calls") == 0, 20, "the first job consumed")
    heartbeat_key = Names("fin").worker_heartbeat(worker.hostname)
    owner = json.loads(redis_client.get(heartbeat_key) or "{}")["owner"]
    assert redis_client.zscore(broker_owners(), owner)  # the worker holds a broker lease
    # Make the worker stop consuming fin.calls while staying connected: the failure mode.
    control = Celery(broker=redis_url)
    replies = control.control.cancel_consumer(
        "fin.calls", destination=[worker.hostname], reply=True, timeout=10
    )
    assert replies, "the worker did not confirm it stopped consuming fin.calls"
    enqueue_job(redis_client, "fin.start", start_kwargs("wd-2"))
    code = wait_until(lambda: worker.process.poll(), 60, "the stuck worker to exit")
    assert code == STUCK_EXIT_CODE
    assert "stopped consuming" in worker.logs()
    assert redis_client.llen("fin.calls") == 1  # the job is kept for the next worker
    assert job
    # it left nothing to wait for: no lease for other workers to outlive, no liveness key
    assert redis_client.zscore(broker_owners(), owner) is None
    assert not redis_client.exists(heartbeat_key)

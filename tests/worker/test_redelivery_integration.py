"""A redelivered job whose earlier attempt may have reached Fin longer ago than the retry
deadline is not sent again (Fin de-duplicates only within 5 minutes): it ends ``call.failed``
``outcome_unknown`` and is dead-lettered, for an operator to replay on purpose."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from fin_relay.contract.names import Names
from tests.fixtures.worker import enqueue_job, results, start_kwargs, wait_for_result, wait_until

pytestmark = pytest.mark.integration
N = Names("fin")


def _state_after_a_kill(client: redis.Redis, job_id: str, age_s: float) -> None:
    """The job hash a worker killed mid-call leaves: first seen, stamped, slot granted (the
    attempt's ``ambiguous_since_ms``), no outcome."""
    then_ms = int((time.time() - age_s) * 1000)
    client.hset(
        N.job(job_id),
        mapping={
            "first_seen_ms": then_ms,
            "ts": "2025-01-24T10:01:20.123Z",
            "ambiguous_since_ms": then_ms,
            "attempts": 0,
        },
    )


def test_redelivery_past_the_deadline_is_not_sent_again(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    celery_worker_proc(base_url=sim.base_url)
    job_id = "killed-long-ago"
    _state_after_a_kill(redis_client, job_id, age_s=241)  # default deadline: 240 s
    enqueue_job(redis_client, "fin.start", start_kwargs("c-unknown"), task_id=job_id)
    env = wait_for_result(redis_client, job_id)
    assert env.type == "call.failed"
    assert env.data["reason"] == "outcome_unknown"
    assert "FIN_RELAY_RETRY_DEADLINE_S" in env.data["error"]["message"]
    assert sim.control.requests() == []
    dead = [e for e in results(redis_client, stream="dead") if e.data.get("task_id") == job_id]
    assert len(dead) == 1 and dead[0].data["reason"] == "outcome_unknown"


def test_redelivery_within_the_deadline_is_sent_with_the_same_timestamp(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    celery_worker_proc(base_url=sim.base_url)
    job_id = "killed-recently"
    _state_after_a_kill(redis_client, job_id, age_s=30)
    enqueue_job(redis_client, "fin.start", start_kwargs("c-recent"), task_id=job_id)
    env = wait_for_result(redis_client, job_id)
    assert env.type == "call.succeeded"
    (request,) = sim.control.requests()
    assert request["body"]["message"]["timestamp"] == "2025-01-24T10:01:20.123Z"
    assert request["body"]["message"]["timestamp_ms"] == "2025-01-24T10:01:20.123Z"


@pytest.mark.redis_broker  # the test's Producer publishes to the Redis broker
def test_replaying_an_unknown_outcome_sends_it_with_a_fresh_time(
    redis_url: str,
    redis_client: redis.Redis,
    fin_simulator: Callable,
    celery_worker_proc: Callable,
) -> None:
    """The operator's replay of an ``outcome_unknown`` dead letter is a new message on purpose:
    the worker stamps a fresh time (the old one's 5-minute window has passed)."""
    from fin_relay.contract.settings import ProducerSettings
    from fin_relay.producer.dead import replay
    from fin_relay.producer.enqueue import Producer

    sim = fin_simulator()
    celery_worker_proc(base_url=sim.base_url)
    job_id = "unknown-then-replayed"
    _state_after_a_kill(redis_client, job_id, age_s=241)
    old_time = "2025-01-24T10:01:20.123Z"
    kwargs = start_kwargs(
        "c-replayed", message={"author": "user", "body": "Hi", "timestamp": old_time}
    )
    enqueue_job(redis_client, "fin.start", kwargs, task_id=job_id)
    assert wait_for_result(redis_client, job_id).data["reason"] == "outcome_unknown"
    with Producer(ProducerSettings(redis_url=redis_url)) as producer:
        replay(producer, job_id)
    wait_until(
        lambda: any(e.id == f"{job_id}.succeeded.1" for e in results(redis_client)),
        20,
        "the replayed job to succeed",
    )
    (request,) = sim.control.requests()
    sent = request["body"]["message"]
    assert sent["timestamp"] != old_time and sent["timestamp"] == sent["timestamp_ms"]
    assert sent["timestamp"] == redis_client.hget(N.job(job_id), "ts")

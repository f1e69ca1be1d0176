"""Call outcomes through real worker processes against the simulator over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis

from fin_relay.contract.celery_wire import task_message
from fin_relay.contract.names import Names
from tests.fixtures.worker import (
    enqueue_job,
    results,
    start_kwargs,
    wait_for_result,
    wait_until,
)

pytestmark = pytest.mark.integration
N = Names("fin")


def sim_requests(sim, endpoint: str | None = None) -> list[dict]:
    reqs = sim.control.requests()
    return [r for r in reqs if endpoint is None or r["endpoint"] == endpoint]


def test_start_succeeds_and_publishes_everywhere(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    celery_worker_proc(base_url=sim.base_url)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(N.conversation_channel("c-ok"))
    attachment = {"type": "file", "name": "a.png", "content_type": "image/png", "data": "QUJD"}
    relay = {"metadata": {"ticket": 7}, "correlation_id": "corr-1"}
    job = enqueue_job(
        redis_client,
        "fin.start",
        start_kwargs("c-ok", attachments=[attachment], relay=relay),
        sequence=True,
    )
    env = wait_for_result(redis_client, job)
    assert env.type == "call.succeeded" and env.id == f"{job}.succeeded.0"
    assert env.data["operation"] == "start" and env.data["attempts"] == 1
    assert env.data["metadata"] == {"ticket": 7} and env.data["correlation_id"] == "corr-1"
    assert env.data["response"]["status"] == "thinking"
    assert "QUJD" not in env.to_json() and "Hello there" not in env.to_json()
    assert env.data["request"]["attachments"] == [
        {"type": "file", "name": "a.png", "content_type": "image/png"}
    ]
    stamped = redis_client.hget(N.job(job), "ts")
    assert sim_requests(sim, "start")[0]["message_timestamp"] == stamped
    state = redis_client.hgetall(N.conversation_state("c-ok"))
    assert state["status"] in ("thinking", "awaiting_user_reply")
    msgs = [
        m
        for m in (pubsub.get_message(timeout=1.0) for _ in range(5))
        if m and m["type"] == "message"
    ]
    assert any(json.loads(m["data"])["id"] == env.id for m in msgs)
    pubsub.close()


def test_503_twice_then_200_succeeds_on_third_attempt(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    sim.control.set_faults({"start": {"queue": [503, 503]}})
    worker = celery_worker_proc(base_url=sim.base_url)
    job = enqueue_job(redis_client, "fin.start", start_kwargs("c-503"))
    env = wait_for_result(redis_client, job)
    assert env.type == "call.succeeded" and env.data["attempts"] == 3
    reqs = sim_requests(sim, "start")
    assert [r["status"] for r in reqs] == [503, 503, 200]
    # the simulator logs no body for injected faults; the stamp is durable in the job hash
    assert reqs[2]["message_timestamp"] == redis_client.hget(N.job(job), "ts")
    assert reqs[0]["time_ms"] < reqs[1]["time_ms"] < reqs[2]["time_ms"]
    logs = worker.logs()
    assert f"job={job} conv=c-503 op=start retry 1 in" in logs
    assert f"job={job} conv=c-503 op=start retry 2 in" in logs


def test_400_is_one_call_failed_and_dead_lettered(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    sim.control.set_faults({"start": {"queue": [400]}})
    celery_worker_proc(base_url=sim.base_url)
    job = enqueue_job(redis_client, "fin.start", start_kwargs("c-400"), sequence=True)
    env = wait_for_result(redis_client, job)
    assert env.type == "call.failed" and env.data["reason"] == "fin_error"
    assert env.data["status"] == 400 and env.data["error"]["body"]["type"] == "error.list"
    assert env.data["request_id"] == env.data["error"]["body"]["request_id"]
    assert len(sim_requests(sim, "start")) == 1
    dead = results(redis_client, stream="dead")
    assert [d.data["task_id"] for d in dead] == [job] and dead[0].type == "job.dead"
    assert redis_client.exists(N.dead_payload(job))
    assert redis_client.hget(N.job(job), "dead_entry")
    assert redis_client.get(N.conversation_next("c-400")) == "2"  # the conversation moves on


def test_invalid_and_expired_jobs_dead_letter_without_calls(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    celery_worker_proc(base_url=sim.base_url)
    bad = enqueue_job(redis_client, "fin.start", {"conversation_id": "c-bad", "usr": {}})
    old = enqueue_job(
        redis_client,
        "fin.start",
        start_kwargs("c-exp", relay={"expires_at": "2020-01-01T00:00:00.000Z"}),
    )
    bad_env, old_env = wait_for_result(redis_client, bad), wait_for_result(redis_client, old)
    assert bad_env.type == "call.failed" and bad_env.data["reason"] == "invalid_job"
    assert "usr" in bad_env.data["error"]["message"]
    assert old_env.type == "call.failed" and old_env.data["reason"] == "expired"
    assert {d.data["reason"] for d in results(redis_client, stream="dead")} == {
        "invalid_job",
        "expired",
    }
    assert sim_requests(sim) == []


@pytest.mark.redis_broker
def test_duplicate_delivery_after_success_is_not_sent_again(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    worker = celery_worker_proc(base_url=sim.base_url)
    job_id, payload = task_message("fin.start", start_kwargs("c-dup"))
    redis_client.lpush("fin.calls", payload)
    wait_for_result(redis_client, job_id)
    redis_client.lpush("fin.calls", payload)  # the same Celery message, delivered again
    wait_until(
        lambda: f"job={job_id} conv=c-dup op=start duplicate delivery" in worker.logs(),
        20,
        "the duplicate to be handled",
    )
    assert len(sim_requests(sim, "start")) == 1
    assert [e.data["job_id"] for e in results(redis_client)] == [job_id]


@pytest.mark.redis_broker
def test_replayed_dead_job_that_succeeds_leaves_the_dead_stream(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    from fin_relay.contract.jobs import prepare_replay

    sim = fin_simulator()
    sim.control.set_faults({"start": {"queue": [422]}})
    celery_worker_proc(base_url=sim.base_url)
    job = enqueue_job(redis_client, "fin.start", start_kwargs("c-replay"), sequence=True)
    assert wait_for_result(redis_client, job).type == "call.failed"
    payload = json.loads(redis_client.get(N.dead_payload(job)))
    pipe = redis_client.pipeline()
    prepare_replay(pipe, N, job)  # what `fin-relay dead replay` does before re-enqueueing
    pipe.execute()
    _id, message = task_message(payload["task"], payload["kwargs"], task_id=payload["task_id"])
    redis_client.lpush(payload["queue"], message)
    wait_until(
        lambda: any(e.id == f"{job}.succeeded.1" for e in results(redis_client)),
        20,
        "the replayed job to succeed",
    )
    assert results(redis_client, stream="dead") == []
    assert not redis_client.exists(N.dead_payload(job))
    starts = sim_requests(sim, "start")
    assert [r["status"] for r in starts] == [422, 200]

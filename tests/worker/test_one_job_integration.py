"""One job id is one job: two copies of one message in the queue (a producer re-sent it after
an ambiguous enqueue error) never cause a second call to Fin or a second outcome, while the
worker's own re-publication of a job (a retry) is never refused. Real worker processes, a real
Redis, the simulator over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import redis

from tests.fixtures.worker import (
    WorkerProcess,
    enqueue_job,
    results,
    start_kwargs,
    wait_for_result,
    wait_until,
)

pytestmark = pytest.mark.integration


def logs(workers: list[WorkerProcess]) -> str:
    return "\n".join(w.logs() for w in workers)


def copies_done(
    client: redis.Redis, workers: list[WorkerProcess], job_id: str, copies: int = 2
) -> bool:
    """Every copy of ``job_id`` was handled: all but one acknowledged as duplicates, or (the
    failure this file is about) more than one outcome published."""
    dups = sum(
        f"job={job_id} " in line and "duplicate delivery" in line
        for line in logs(workers).splitlines()
    )
    return dups >= copies - 1 or len(outcomes_of(client, job_id)) > 1


def lease_waits(workers: list[WorkerProcess], job_id: str) -> int:
    return sum(
        f"job={job_id} " in line and "another delivery of this job is in progress" in line
        for line in logs(workers).splitlines()
    )


def outcomes_of(client: redis.Redis, job_id: str, stream: str = "results") -> list:
    return [e for e in results(client, stream=stream) if e.data.get("job_id") == job_id]


def test_same_job_id_enqueued_twice_calls_fin_once_and_publishes_once(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    # slow Fin: both copies of each job are taken while the first call is still in flight
    sim.control.set_faults({"start": {"latency_ms": 1000}})
    workers = [celery_worker_proc(base_url=sim.base_url, concurrency=4) for _ in range(2)]
    jobs = [f"twice-{i}" for i in range(4)]
    for job_id in jobs:
        for _ in range(2):  # the same message, twice in the queue
            enqueue_job(redis_client, "fin.start", start_kwargs(f"c-{job_id}"), task_id=job_id)
    for job_id in jobs:
        assert wait_for_result(redis_client, job_id).type == "call.succeeded"
        wait_until(
            lambda j=job_id: copies_done(redis_client, workers, j), 30, f"the copy of {job_id}"
        )
    for job_id in jobs:
        starts = [r for r in sim.control.requests() if r["conversation_id"] == f"c-{job_id}"]
        assert len(starts) == 1, (job_id, starts)
        envelopes = outcomes_of(redis_client, job_id)
        assert [e.id for e in envelopes] == [f"{job_id}.succeeded.0"]
        assert envelopes[0].data["attempts"] == 1
    # the copies really overlapped: at least one was deferred while the other held the job
    assert sum(lease_waits(workers, j) for j in jobs) >= 1, logs(workers)[-3000:]
    assert len(sim.control.requests()) == len(jobs)


def test_a_retry_after_503_is_not_refused(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    sim.control.set_faults({"start": {"queue": [503, 503]}})
    workers = [celery_worker_proc(base_url=sim.base_url, concurrency=4) for _ in range(2)]
    job_id = enqueue_job(redis_client, "fin.start", start_kwargs("c-retry"))
    env = wait_for_result(redis_client, job_id)
    assert env.type == "call.succeeded" and env.data["attempts"] == 3
    assert [r["status"] for r in sim.control.requests()] == [503, 503, 200]
    # each re-publication took the job at once: the failed delivery had released it first
    assert lease_waits(workers, job_id) == 0, logs(workers)[-3000:]
    assert f"job={job_id} conv=c-retry op=start retry 2 in" in logs(workers)


def test_a_duplicate_of_a_job_being_retried_adds_no_call_and_no_outcome(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    sim.control.set_faults({"start": {"queue": [503], "latency_ms": 500}})
    workers = [celery_worker_proc(base_url=sim.base_url, concurrency=4) for _ in range(2)]
    job_id = "retried-twice"
    for _ in range(2):
        enqueue_job(redis_client, "fin.start", start_kwargs("c-retried"), task_id=job_id)
    env = wait_for_result(redis_client, job_id)
    assert env.type == "call.succeeded" and env.data["attempts"] == 2
    wait_until(lambda: copies_done(redis_client, workers, job_id), 30, "the second copy")
    assert [r["status"] for r in sim.control.requests()] == [503, 200]
    assert [e.id for e in outcomes_of(redis_client, job_id)] == [f"{job_id}.succeeded.0"]


def test_duplicates_of_an_invalid_and_an_expired_job_fail_once_each(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    workers = [celery_worker_proc(base_url=sim.base_url, concurrency=4) for _ in range(2)]
    expired = start_kwargs("c-old", relay={"expires_at": "2020-01-01T00:00:00.000Z"})
    cases = {
        "invalid-twice": ({"conversation_id": "c-bad", "usr": {}}, "invalid_job"),
        "expired-twice": (expired, "expired"),
    }
    for job_id, (kwargs, _reason) in cases.items():
        for _ in range(3):
            enqueue_job(redis_client, "fin.start", kwargs, task_id=job_id)
    for job_id, (_kwargs, reason) in cases.items():
        env = wait_for_result(redis_client, job_id)
        assert env.type == "call.failed" and env.data["reason"] == reason
        wait_until(
            lambda j=job_id: copies_done(redis_client, workers, j, copies=3),
            30,
            f"the copies of {job_id} to be handled",
        )
        assert [e.id for e in outcomes_of(redis_client, job_id)] == [f"{job_id}.failed.0"]
        dead = [e for e in results(redis_client, stream="dead") if e.data["task_id"] == job_id]
        assert len(dead) == 1 and dead[0].data["reason"] == reason
    assert sim.control.requests() == []


@pytest.mark.redis_broker
@pytest.mark.parametrize("kind", ["call", "event"])
def test_the_ack_is_written_in_the_outcome_transaction(
    redis_url: str,
    redis_client: redis.Redis,
    fin_simulator: Callable,
    celery_worker_proc: Callable,
    kind: str,
) -> None:
    """With the broker on the worker's Redis (the default), the message's unacked records are
    removed in the MULTI/EXEC that records the job's outcome (a call) or publishes the event,
    and nowhere else: no second round trip for the ack, and no window in which the outcome is
    recorded while the message could still be delivered again."""
    sim = fin_simulator()
    celery_worker_proc(base_url=sim.base_url)
    commands: list[str] = []

    def watch() -> None:
        with redis.Redis.from_url(redis_url, decode_responses=True).monitor() as monitor:
            for entry in monitor.listen():
                commands.append(str(entry["command"]))
                if "monitor-caught-up" in commands[-1]:
                    return

    threading.Thread(target=watch, daemon=True).start()

    def seen(mark: str) -> bool:  # MONITOR shows every command: wait for one of ours
        redis_client.echo(mark)
        return any(mark in c for c in commands)

    wait_until(lambda: seen("monitor-attached"), 10, "MONITOR attached")
    if kind == "call":
        enqueue_job(redis_client, "fin.start", start_kwargs("c-ack"), task_id="ack-1")
        assert wait_for_result(redis_client, "ack-1").type == "call.succeeded"
        marker = "HSET fin:job:ack-1 outcome"
    else:
        event = {"event_name": "fin_status_updated", "conversation_id": "c-ack", "status": "idle"}
        enqueue_job(
            redis_client,
            "fin.event",
            {"event": event, "event_id": "ev-ack-1", "received_at_ms": 1},
        )
        wait_until(lambda: results(redis_client, stream="events"), 10, "the event published")
        marker = "SET fin:job:event:ev-ack-1 "
    wait_until(lambda: redis_client.hlen("unacked") == 0, 10, "the message acknowledged")
    wait_until(lambda: seen("monitor-caught-up"), 10, "MONITOR caught up")
    outcome = next(i for i, c in enumerate(commands) if c.startswith(marker))
    start = max(i for i in range(outcome) if commands[i] == "MULTI")
    end = next(i for i in range(outcome, len(commands)) if commands[i] == "EXEC")
    in_block = [c for c in commands[start:end] if c.startswith("HDEL unacked ")]
    assert len(in_block) == 1, commands[start : end + 1]
    tag = in_block[0].split()[-1]
    assert f"ZREM unacked_index {tag}" in commands[start:end]
    elsewhere = [c for c in commands[:start] + commands[end:] if tag in c and "unacked" in c]
    assert [c for c in elsewhere if c.startswith(("HDEL", "ZREM"))] == [], elsewhere

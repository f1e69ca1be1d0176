"""The broker doorbell: a worker whose queues are empty waits for Redis to report a write to
them (key tracking) instead of polling every millisecond, and polls as before where it cannot.
Real worker processes, a real Redis, the simulator over HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from fin_relay.worker import transport
from tests.fixtures.worker import enqueue_job, start_kwargs, wait_for_result, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.redis_broker]


def doorbells(client: redis.Redis) -> list[dict]:
    """Connections with broadcast key tracking that are subscribed: a worker's doorbell."""
    return [
        c for c in client.client_list() if "B" in c.get("flags", "") and int(c.get("sub", 0)) > 0
    ]


def take_scripts_during(client: redis.Redis, seconds: float) -> int:
    """EVALSHA calls Redis ran in the next ``seconds`` (the take script is one per take)."""
    client.config_resetstat()
    time.sleep(seconds)  # the measuring window itself, not a wait for an event
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0))


def test_a_worker_between_messages_waits_for_the_doorbell_not_a_millisecond_poll(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    celery_worker_proc(base_url=sim.base_url, concurrency=2)
    bell = wait_until(lambda: doorbells(redis_client), 10, "the worker's doorbell connection")
    assert len(bell) == 1
    job = enqueue_job(redis_client, "fin.start", start_kwargs(f"bell-{uuid.uuid4().hex[:8]}"))
    wait_for_result(redis_client, job)
    # Within BUSY_WINDOW_S of a message, polling took every 0.5-1 ms (about 700 takes in this
    # second here); with the doorbell an empty take is repeated only after the safety poll.
    calls = take_scripts_during(redis_client, 1.0)
    assert calls <= 1.0 / transport.DOORBELL_SAFETY_POLL_S + 40, calls
    # and a message pushed now is taken on the ring, well before a safety poll would
    job = enqueue_job(redis_client, "fin.start", start_kwargs(f"bell-{uuid.uuid4().hex[:8]}"))
    assert wait_for_result(redis_client, job).type == "call.succeeded"


def test_a_lost_doorbell_connection_is_replaced_and_nothing_waits_meanwhile(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    sim = fin_simulator()
    worker = celery_worker_proc(base_url=sim.base_url, concurrency=2)
    first = wait_until(lambda: doorbells(redis_client), 10, "the worker's doorbell connection")
    redis_client.execute_command("CLIENT", "KILL", "ID", first[0]["id"])
    job = enqueue_job(redis_client, "fin.start", start_kwargs(f"bell-{uuid.uuid4().hex[:8]}"))
    assert wait_for_result(redis_client, job).type == "call.succeeded"  # polled meanwhile
    again = wait_until(
        lambda: [c for c in doorbells(redis_client) if c["id"] != first[0]["id"]],
        transport.DOORBELL_RETRY_S + 10,
        "a new doorbell connection",
    )
    assert len(again) == 1
    assert "doorbell connection lost" in worker.logs()
    job = enqueue_job(redis_client, "fin.start", start_kwargs(f"bell-{uuid.uuid4().hex[:8]}"))
    assert wait_for_result(redis_client, job).type == "call.succeeded"


def test_where_redis_refuses_key_tracking_the_worker_polls(
    redis_url: str, redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    user, password = f"notrack-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    redis_client.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-client|tracking"],
    )
    try:
        parts = urlsplit(redis_url)
        url = urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))
        sim = fin_simulator()
        worker = celery_worker_proc(
            base_url=sim.base_url, concurrency=2, env={"REDIS_URL": url, "FIN_BROKER_URL": url}
        )
        job = enqueue_job(redis_client, "fin.start", start_kwargs(f"bell-{uuid.uuid4().hex[:8]}"))
        assert wait_for_result(redis_client, job).type == "call.succeeded"
        assert "no key tracking" in worker.logs()
        assert doorbells(redis_client) == []
    finally:
        redis_client.acl_deluser(user)

"""Per-conversation order across two worker processes, with Fin's turns signalled by webhooks
(simulator → in-test forwarder → ``fin.event`` → conversation state)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from fin_relay.contract.names import Names
from tests.fixtures.worker import (
    enqueue_job,
    reply_kwargs,
    results,
    start_kwargs,
    wait_for_result,
    wait_until,
)

pytestmark = pytest.mark.integration
N = Names("fin")


def test_start_and_four_replies_in_order_each_after_previous_turn(
    redis_client: redis.Redis,
    fin_simulator: Callable,
    celery_worker_proc: Callable,
    event_forwarder,
) -> None:
    sim = fin_simulator(callback_url=event_forwarder.url, reply_delay_ms=2000)
    for _ in range(2):
        celery_worker_proc(base_url=sim.base_url, concurrency=4)
    conv = "c-seq"
    jobs = [enqueue_job(redis_client, "fin.start", start_kwargs(conv, "step 0"), sequence=True)]
    jobs += [
        enqueue_job(redis_client, "fin.reply", reply_kwargs(conv, f"step {i}"), sequence=True)
        for i in range(1, 5)
    ]
    envs = [wait_for_result(redis_client, j, timeout_s=60) for j in jobs]
    assert [e.type for e in envs] == ["call.succeeded"] * 5, [e.data for e in envs]
    calls = [r for r in sim.control.requests() if r["conversation_id"] == conv]
    assert [r["status"] for r in calls] == [200] * 5  # no 409 "Fin is busy"
    assert [r["endpoint"] for r in calls] == ["start"] + ["reply"] * 4
    assert [e.data["seq"] for e in envs] == [1, 2, 3, 4, 5]
    # Fin saw them in enqueue order, each only after the previous turn's awaiting_user_reply
    done_times = sorted(
        w["time_ms"]
        for w in sim.control.webhooks()
        if w["conversation_id"] == conv and w["event_status"] == "awaiting_user_reply"
    )
    for i, call in enumerate(calls[1:]):
        assert call["time_ms"] >= done_times[i], (i, call["time_ms"], done_times)
    # events were published under their own names, with the stable event id
    events = [e for e in results(redis_client, stream="events") if e.conversation_id == conv]
    assert {"fin_replied"} <= {e.type for e in events}


def test_reply_after_escalation_is_skipped(
    redis_client: redis.Redis,
    fin_simulator: Callable,
    celery_worker_proc: Callable,
    event_forwarder,
) -> None:
    sim = fin_simulator(callback_url=event_forwarder.url, reply_delay_ms=100)
    celery_worker_proc(base_url=sim.base_url)
    conv = "c-esc"
    first = enqueue_job(
        redis_client, "fin.start", start_kwargs(conv, "I want a human"), sequence=True
    )
    assert wait_for_result(redis_client, first).type == "call.succeeded"
    wait_until(
        lambda: redis_client.hget(N.conversation_state(conv), "escalated") == "1",
        20,
        "the escalated event to be processed",
    )
    reply = enqueue_job(redis_client, "fin.reply", reply_kwargs(conv, "hello?"), sequence=True)
    env = wait_for_result(redis_client, reply)
    assert env.type == "call.skipped" and env.data["reason"] == "escalated"
    assert [r["endpoint"] for r in sim.control.requests() if r["conversation_id"] == conv] == [
        "start"
    ]

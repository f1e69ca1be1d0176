"""The ``fin.event`` task through a real worker: publish, state, unknown names, dead letters."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from fin_relay.contract.celery_wire import task_message
from fin_relay.contract.names import Names
from tests.fixtures.worker import results, wait_until

pytestmark = pytest.mark.integration
N = Names("fin")


def send_event(client: redis.Redis, event: dict, event_id: str) -> None:
    _id, payload = task_message(
        "fin.event", {"event": event, "event_id": event_id, "received_at_ms": 1}
    )
    client.lpush("fin.events", payload)


@pytest.mark.redis_broker
def test_events_published_state_updated_unknown_kept_invalid_dead(
    redis_client: redis.Redis, celery_worker_proc: Callable
) -> None:
    celery_worker_proc(base_url="http://127.0.0.1:9")  # no Fin calls in this test
    pubsub = redis_client.pubsub()
    pubsub.subscribe(N.conversation_channel("c-ev"))
    redis_client.hset(
        N.conversation_state("c-ev"), mapping={"turn_in_progress": "1", "call_at_ms": "1000"}
    )
    status = {
        "event_name": "fin_status_updated",
        "conversation_id": "c-ev",
        "user_id": "u",
        "status": "awaiting_user_reply",
        "created_at_ms": "2026-01-01T00:00:00.000Z",
    }
    future = {
        "event_name": "fin_mood_changed",
        "conversation_id": "c-ev",
        "created_at_ms": "2026-01-01T00:00:01.000Z",
        "mood": "cheerful",
    }
    broken = {
        "event_name": "fin_replied",
        "conversation_id": "c-ev",
        "created_at_ms": "2026-01-01T00:00:02.000Z",
    }
    send_event(redis_client, status, "ev-1")
    send_event(redis_client, future, "ev-2")
    send_event(redis_client, broken, "ev-3")
    send_event(redis_client, status, "ev-1")  # redelivered: same envelope id
    wait_until(
        lambda: (
            redis_client.llen("fin.events") == 0
            and len(results(redis_client, stream="events")) >= 2
            and results(redis_client, stream="dead")
        ),
        20,
        "events and the dead letter",
    )
    wait_until(lambda: not redis_client.zcard("unacked_index"), 10, "all events acknowledged")
    events = results(redis_client, stream="events")
    assert sorted(e.id for e in events) == ["ev-1", "ev-2"]  # the redelivery published nothing
    assert {e.type for e in events} == {"fin_status_updated", "fin_mood_changed"}
    assert next(e for e in events if e.id == "ev-2").data["mood"] == "cheerful"
    state = redis_client.hgetall(N.conversation_state("c-ev"))
    assert state["turn_in_progress"] == "0" and state["status"] == "awaiting_user_reply"
    (dead,) = results(redis_client, stream="dead")
    assert dead.type == "event.dead" and dead.data["reason"] == "invalid_event"
    assert dead.data["dead_id"] == "ev-3" and "message" in dead.data["error"]
    assert redis_client.exists(N.dead_payload("ev-3"))
    msgs = [pubsub.get_message(timeout=1.0) for _ in range(6)]
    assert any(m and m["type"] == "message" for m in msgs)
    pubsub.close()

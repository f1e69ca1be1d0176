"""The ``fin.event`` task through a real worker: publish, state, unknown names and shapes, dead
letters only for what cannot be an event. Tasks are put on the queue directly (as the ingest
does), so kwargs the ingest never sends can be tried too; waits are ``XREAD BLOCK`` reads."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from fin_relay.contract.celery_wire import task_message
from fin_relay.contract.names import Names
from tests.fixtures.ingest import StreamReader
from tests.fixtures.worker import wait_until

pytestmark = pytest.mark.integration
N = Names("fin")


def send_event(client: redis.Redis, event: Any, event_id: str) -> None:
    _id, payload = task_message(
        "fin.event", {"event": event, "event_id": event_id, "received_at_ms": 1}
    )
    client.lpush("fin.events", payload)


@pytest.mark.redis_broker
def test_events_published_state_updated_unknown_kept_invalid_dead(
    redis_client: redis.Redis, celery_worker_proc: Callable[..., Any]
) -> None:
    events = StreamReader(redis_client, N.events)
    dead = StreamReader(redis_client, N.dead)
    # one thread: handled in queue order, so the last event published proves the rest handled
    celery_worker_proc(base_url="http://127.0.0.1:9", concurrency=1)  # no Fin calls here
    pubsub = redis_client.pubsub()
    pubsub.subscribe(N.conversation_channel("c-ev"))
    assert pubsub.get_message(timeout=5.0)["type"] == "subscribe"  # type: ignore[index]
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
    broken = {  # a known name without user_id, message, status: still an event, published
        "event_name": "fin_replied",
        "conversation_id": "c-ev",
        "created_at_ms": "2026-01-01T00:00:02.000Z",
    }
    not_events: list[tuple[str, Any, str]] = [
        ("d-list", ["not", "an", "object"], "event is not a JSON object"),
        ("d-null", None, "event is not a JSON object"),
        ("d-no-name", {"conversation_id": "c-ev", "x": 1}, "event_name is missing"),
        ("d-name-int", {"event_name": 5, "conversation_id": "c-ev"}, "event_name is not a non-empty string"),
        ("d-name-empty", {"event_name": "", "conversation_id": "c-ev"}, "event_name is not a non-empty string"),
        ("d-no-conv", {"event_name": "fin_status_updated", "status": "complete"}, "conversation_id is missing"),
        ("d-conv-list", {"event_name": "x", "conversation_id": ["c-ev"]}, "conversation_id is not a non-empty string"),
    ]  # fmt: skip
    send_event(redis_client, status, "ev-1")
    send_event(redis_client, future, "ev-2")
    send_event(redis_client, broken, "ev-3")
    for dead_id, event, _error in not_events:
        send_event(redis_client, event, dead_id)
    send_event(redis_client, status, "ev-1")  # redelivered: same envelope id
    send_event(redis_client, {**future, "conversation_id": "c-last"}, "ev-last")
    events.wait_for_id("ev-last")
    wait_until(lambda: not redis_client.zcard("unacked_index"), 10, "all events acknowledged")

    published = events.matching(lambda e: True)
    assert [e["id"] for e in published] == ["ev-1", "ev-2", "ev-3", "ev-last"]  # ev-1 once
    by_id = {e["id"]: e for e in published}
    assert by_id["ev-1"]["type"] == "fin_status_updated" and by_id["ev-1"]["data"] == status
    assert by_id["ev-2"]["type"] == "fin_mood_changed" and by_id["ev-2"]["data"] == future
    assert by_id["ev-3"]["type"] == "fin_replied" and by_id["ev-3"]["data"] == broken
    state = redis_client.hgetall(N.conversation_state("c-ev"))
    assert state["turn_in_progress"] == "0" and state["status"] == "awaiting_user_reply"

    letters = dead.matching(lambda e: True)
    assert [d["data"]["dead_id"] for d in letters] == [d for d, _e, _r in not_events]
    for letter, (dead_id, event, error) in zip(letters, not_events, strict=True):
        assert letter["type"] == "event.dead" and letter["id"] == f"{dead_id}.dead"
        assert letter["data"]["reason"] == "invalid_event"
        assert letter["data"]["error"] == error, dead_id
        payload = json.loads(redis_client.get(N.dead_payload(dead_id)) or "{}")
        assert payload["kwargs"]["event"] == event

    channel = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        channel.append(json.loads(message["data"]))
    # the conversation's channel: the three events, then the dead letters that named it
    assert [m["id"] for m in channel if m["type"] != "event.dead"] == ["ev-1", "ev-2", "ev-3"]
    assert [m["id"] for m in channel if m["type"] == "event.dead"] == [
        "d-no-name.dead",
        "d-name-int.dead",
        "d-name-empty.dead",
    ]
    pubsub.close()

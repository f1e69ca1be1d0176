"""RabbitMQ as the Celery broker (``FIN_BROKER_URL=amqp://…``) while Redis keeps the limiter,
state, streams and channels: webhook → ingest (kombu path) → RabbitMQ → worker → stream, and
producer → RabbitMQ → worker → Fin → result. Runs in a private vhost; fails in CI without a
RabbitMQ, skips elsewhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis

from fin_relay.contract.fin_api import format_fin_time
from fin_relay.contract.settings import ProducerSettings, load
from fin_relay.producer import Producer
from tests.fixtures.broker import rabbitmq_vhost
from tests.fixtures.ingest import TEST_SECRET
from tests.fixtures.worker import results, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


@pytest.fixture
def amqp_url() -> Iterator[str]:
    yield from rabbitmq_vhost()


def test_webhook_and_job_through_rabbitmq(
    amqp_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    fin_simulator: Any,
    celery_worker_proc: Any,
    start_ingest: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = fin_simulator()
    celery_worker_proc(base_url=sim.base_url, concurrency=4, env={"FIN_BROKER_URL": amqp_url})
    ingest = start_ingest(redis_url, env={"FIN_BROKER_URL": amqp_url})
    event = {
        "event_name": "fin_status_updated",
        "conversation_id": "rmq-1",
        "user_id": "u",
        "status": "awaiting_user_reply",
        "created_at_ms": format_fin_time(datetime.now(UTC)),
    }
    body = json.dumps(event).encode()
    first = httpx.post(ingest.webhook_url, content=body, headers=ingest.headers(body), timeout=10)
    again = httpx.post(ingest.webhook_url, content=body, headers=ingest.headers(body), timeout=10)
    assert (first.status_code, again.status_code) == (202, 200)
    published = wait_until(lambda: results(redis_client, stream="events"), 30, "the event")
    assert [e.data for e in published] == [event]
    assert redis_client.llen("fin.events") == 0  # it went through RabbitMQ, not a Redis list

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("FIN_BROKER_URL", amqp_url)
    producer = Producer(load(ProducerSettings))
    handle = producer.start(conversation_id="rmq-2", user={"id": "u-2"}, message="Hello")
    outcome = handle.wait(timeout_s=30)
    assert outcome.type == "call.succeeded" and outcome.data["job_id"] == handle.id
    assert [r["conversation_id"] for r in sim.control.requests()] == ["rmq-2"]
    producer.close()


def test_producer_jobs_keep_enqueue_order_through_rabbitmq(
    amqp_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    fin_simulator: Any,
    celery_worker_proc: Any,
    start_ingest: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RabbitMQ's guarantee: the Producer numbers a conversation's jobs at enqueue (in Redis,
    before publishing), so a start and four replies enqueued back to back reach Fin in that
    order through two workers of concurrency 4, each reply after the previous turn ended."""
    ingest = start_ingest(redis_url, env={"FIN_BROKER_URL": amqp_url})
    sim = fin_simulator(callback_url=ingest.webhook_url, secret=TEST_SECRET, reply_delay_ms=100)
    for _ in range(2):
        celery_worker_proc(base_url=sim.base_url, concurrency=4, env={"FIN_BROKER_URL": amqp_url})
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("FIN_BROKER_URL", amqp_url)
    conv = "rmq-order"
    with Producer(load(ProducerSettings)) as producer:
        handles = [producer.start(conversation_id=conv, user={"id": "u"}, message="m0")]
        handles += [
            producer.reply(conversation_id=conv, user={"id": "u"}, message=f"m{i}")
            for i in range(1, 5)
        ]
        outcomes = [h.wait(timeout_s=60) for h in handles]
    assert [o.type for o in outcomes] == ["call.succeeded"] * 5, [o.data for o in outcomes]
    calls = [r for r in sim.control.requests() if r["conversation_id"] == conv]
    assert [r["body"]["message"]["body"] for r in calls] == [f"m{i}" for i in range(5)]
    turn_ends = sorted(
        w["time_ms"]
        for w in sim.control.webhooks()
        if w["conversation_id"] == conv and w["event_status"] == "awaiting_user_reply"
    )
    for i in range(1, 5):
        assert calls[i]["time_ms"] >= turn_ends[i - 1], (i, calls, turn_ends)

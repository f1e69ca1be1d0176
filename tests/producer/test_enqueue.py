"""Enqueueing onto a real Redis: the wire message, idempotency, waiting for an outcome."""

from __future__ import annotations

import threading

import pytest
import redis

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.names import Names
from fin_relay.contract.publish import publish
from fin_relay.producer import Producer
from tests.producer.helpers import USER, queued_messages, settings_for


def _publish_outcome(client: redis.Redis, job_id: str, kind: str = "call.succeeded") -> Envelope:
    names = Names("fin")
    envelope = Envelope.now(
        id=f"res-{job_id}", type=kind, conversation_id="c1", data={"job_id": job_id}
    )
    publish(client, names, [(names.results, envelope)], maxlen=1000)
    return envelope


def test_start_pushes_a_celery_message_with_body_and_relay_options(
    producer: Producer, redis_client: redis.Redis
) -> None:
    handle = producer.start(
        conversation_id="c1",
        user=USER,
        message="hello",
        metadata={"order": 1},
        correlation_id="corr",
    )
    [message] = queued_messages(redis_client)
    assert message["headers"]["task"] == "fin.start"
    assert message["headers"]["id"] == handle.id
    assert message["args"] == []
    kwargs = message["kwargs"]
    assert kwargs["conversation_id"] == "c1"
    assert kwargs["message"]["body"] == "hello" and kwargs["message"]["timestamp"]
    assert kwargs["relay"]["metadata"] == {"order": 1}
    assert kwargs["relay"]["correlation_id"] == "corr"
    assert isinstance(kwargs["relay"]["enqueued_at_ms"], int)
    assert handle.created and handle.conversation_id == "c1"


def test_every_operation_has_a_typed_function(
    producer: Producer, redis_client: redis.Redis
) -> None:
    producer.start(conversation_id="c", user=USER, message="a")
    producer.reply(conversation_id="c", user=USER, message="b")
    producer.ask(conversation_id="c", user=USER, message="c")
    producer.escalate(conversation_id="c", context="angry")
    producer.csat(conversation_id="c", rating="good", remark="ok")
    producer.capabilities(user=USER)
    producer.procedure_run(procedure_id="p1", conversation_id="c", user=USER)
    tasks = [m["headers"]["task"] for m in queued_messages(redis_client)]
    assert tasks == [
        "fin.start",
        "fin.reply",
        "fin.ask",
        "fin.escalate",
        "fin.csat",
        "fin.capabilities",
        "fin.procedure_run",
    ]


def test_same_job_id_within_the_window_is_one_job(
    producer: Producer, redis_client: redis.Redis
) -> None:
    first = producer.start(conversation_id="c", user=USER, message="a", job_id="order-1")
    second = producer.start(conversation_id="c", user=USER, message="a", job_id="order-1")
    assert first.created and not second.created
    assert first.id == second.id == "order-1"
    assert second.results_from == first.results_from
    assert len(queued_messages(redis_client)) == 1
    ttl = redis_client.ttl(Names("fin").job_idempotency("order-1"))
    assert 0 < ttl <= 24 * 3600


def test_idempotency_window_is_configurable(redis_url: str, redis_client: redis.Redis) -> None:
    with Producer(settings_for(redis_url, fin_relay_idempotency_window_s=30)) as p:
        p.csat(conversation_id="c", rating="ok", job_id="j")
    assert 0 < redis_client.ttl("fin:jobid:j") <= 30


def test_duplicate_concurrent_enqueues_push_once(redis_url: str, redis_client: redis.Redis) -> None:
    results: list[bool] = []

    def enqueue() -> None:
        with Producer(settings_for(redis_url)) as p:
            results.append(p.csat(conversation_id="c", rating="ok", job_id="race").created)

    threads = [threading.Thread(target=enqueue) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(results) == [False] * 7 + [True]
    assert redis_client.llen("fin.calls") == 1


def test_wait_returns_the_outcome_published_after_enqueue(
    producer: Producer, redis_client: redis.Redis
) -> None:
    _publish_outcome(redis_client, "older-job")  # before the enqueue: not ours, skipped
    handle = producer.csat(conversation_id="c1", rating="good")
    _publish_outcome(redis_client, "other-job")
    expected = _publish_outcome(redis_client, handle.id, "call.failed")
    outcome = handle.wait(timeout_s=5)
    assert outcome.id == expected.id and outcome.type == "call.failed"


def test_wait_on_a_duplicate_handle_finds_the_first_jobs_outcome(
    producer: Producer, redis_client: redis.Redis
) -> None:
    producer.csat(conversation_id="c1", rating="good", job_id="j-dup")
    _publish_outcome(redis_client, "j-dup")
    again = producer.csat(conversation_id="c1", rating="good", job_id="j-dup")
    assert not again.created
    assert again.wait(timeout_s=5).data["job_id"] == "j-dup"


def test_wait_times_out(producer: Producer) -> None:
    handle = producer.csat(conversation_id="c1", rating="good")
    with pytest.raises(TimeoutError, match=handle.id):
        handle.wait(timeout_s=0.3)


def test_module_level_functions_use_the_default_producer(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fin_relay import producer as api

    monkeypatch.setenv("REDIS_URL", redis_url)
    api.set_default_producer(None)
    try:
        handle = api.csat(conversation_id="c", rating="bad")
        assert queued_messages(redis_client)[0]["headers"]["id"] == handle.id
        assert api.get_conversation("c").status is None
    finally:
        api.default_producer().close()
        api.set_default_producer(None)


def test_celery_path_publishes_an_equivalent_message(
    redis_url: str, redis_client: redis.Redis
) -> None:
    with Producer(settings_for(redis_url), use_celery=True) as p:
        handle = p.reply(conversation_id="c", user=USER, message="x", job_id="cel-1")
        again = p.reply(conversation_id="c", user=USER, message="x", job_id="cel-1")
    [message] = queued_messages(redis_client)
    assert message["headers"]["task"] == "fin.reply" and message["headers"]["id"] == "cel-1"
    assert message["kwargs"]["relay"]["enqueued_at_ms"] > 0
    assert handle.created and not again.created


def test_separate_redis_broker_gets_the_job(redis_url: str, redis_client: redis.Redis) -> None:
    broker_url = redis_url.rsplit("/", 1)[0] + "/3"
    settings = settings_for(redis_url, fin_broker_url=broker_url)
    broker = redis.Redis.from_url(broker_url)
    try:
        with Producer(settings) as p:
            handle = p.csat(conversation_id="c", rating="ok", job_id="b-1")
        assert redis_client.llen("fin.calls") == 0
        assert queued_messages(broker)[0]["headers"]["id"] == handle.id
    finally:
        broker.close()


def test_on_the_redis_broker_the_producer_leaves_numbering_to_the_take(
    producer: Producer, redis_client: redis.Redis
) -> None:
    """One rule for every client: the worker's take numbers a conversation's jobs in broker
    order, so the Producer takes no number of its own on a Redis broker."""
    a = producer.start(conversation_id="c7", user=USER, message="1", job_id="s-a")
    producer.reply(conversation_id="c7", user=USER, message="2")
    names = Names("fin")
    assert redis_client.hget(names.job(a.id), "seq") is None
    assert redis_client.get(names.conversation_seq("c7")) is None
    assert redis_client.llen("fin.calls") == 2


def test_with_another_broker_conversation_jobs_get_a_number_in_enqueue_order(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A broker that does not number (RabbitMQ; here Celery's own publish path stands for it):
    the Producer takes the number in Redis before it publishes."""
    with Producer(settings_for(redis_url), use_celery=True) as producer:
        a = producer.start(conversation_id="c7", user=USER, message="1", job_id="s-a")
        producer.start(conversation_id="c7", user=USER, message="1", job_id="s-a")  # duplicate
        b = producer.reply(conversation_id="c7", user=USER, message="2")
        c = producer.capabilities(user=USER)  # no conversation: not sequenced
    names = Names("fin")
    assert redis_client.hget(names.job(a.id), "seq") == "1"
    assert redis_client.hget(names.job(b.id), "seq") == "2"
    assert redis_client.get(names.conversation_seq("c7")) == "2"
    assert not redis_client.exists(names.job(c.id))
    assert 0 < redis_client.ttl(names.job(a.id))


def test_the_producer_never_imports_the_worker_or_the_simulator() -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, fin_relay.producer, fin_relay.producer.consumer, fin_relay.producer.dead, "
        "fin_relay.producer.cli_enqueue, fin_relay.producer.cli_watch, "
        "fin_relay.producer.cli_dead, fin_relay.producer.cli_conversation;"
        "bad = [m for m in sys.modules if m.startswith(('fin_relay.worker', 'fin_relay.simulator',"
        " 'fin_relay.webhook_ingest', 'httpx'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=repo
    )
    assert done.returncode == 0, done.stdout + done.stderr

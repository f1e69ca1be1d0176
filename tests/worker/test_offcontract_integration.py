"""Messages on fin-relay's queues that are not valid jobs, through a real worker: each ends as a
dead letter with a reason (and a ``call.failed`` for a call task name), its payload kept in
``{ns}:deadpayload:*``, and nothing of it in the worker log or anywhere else in Redis.

Sent the way other services send them: a bare Celery client's ``send_task`` (unknown task
names, Celery's own built-in task, positional arguments, the pickle serializer), and hand-built
kombu messages LPUSHed on the queue for bodies no Celery client would produce. Waits are
``XREAD BLOCK`` reads of ``{ns}:dead`` / ``{ns}:results``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from fin_relay.contract.envelope import Envelope, fields_agree
from fin_relay.contract.names import Names
from fin_relay.contract.settings import ProducerSettings, WorkerSettings, load
from fin_relay.producer.dead import DeadLetterError, replay
from fin_relay.producer.enqueue import Producer
from fin_relay.worker.offcontract import broker_item_verdict, dead_letter_broker_item
from fin_relay.worker.runtime import Runtime
from tests.fixtures.ingest import StreamReader
from tests.fixtures.worker import enqueue_job, start_kwargs, wait_for_result

pytestmark = [pytest.mark.integration, pytest.mark.redis_broker]
N = Names("fin")


@pytest.fixture
def sender(redis_url: str) -> Iterator[Celery]:
    """Another service's plain Celery client (imports nothing from fin-relay)."""
    app = Celery("other-service", broker=redis_url, set_as_current=False)
    app.conf.task_default_queue = "fin.calls"
    yield app
    app.close()


def kombu_message(
    task: str,
    task_id: str,
    queue: str,
    body: bytes,
    content_type: str = "application/json",
) -> str:
    """A kombu Redis-transport message with an arbitrary body (what no Celery client sends)."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": task_id, "retries": 0},
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def every_redis_value(client: redis.Redis) -> Iterator[tuple[str, str]]:
    """``(key, text)`` for every key of the database: strings, hashes, lists, sets, zsets,
    streams (each entry's fields)."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            text = str(client.get(key))
        elif kind == "hash":
            text = json.dumps(client.hgetall(key))
        elif kind == "list":
            text = json.dumps(client.lrange(key, 0, -1))
        elif kind == "set":
            text = json.dumps(sorted(client.smembers(key)))
        elif kind == "zset":
            text = json.dumps(client.zrange(key, 0, -1))
        elif kind == "stream":
            text = json.dumps(client.xrange(key))
        else:
            text = ""
        yield key, text


def where_is(client: redis.Redis, needle: str) -> list[str]:
    """Every key whose value contains ``needle``."""
    return sorted(key for key, text in every_redis_value(client) if needle in text)


def test_messages_that_are_not_valid_jobs_are_dead_lettered_and_never_logged(
    redis_client: redis.Redis,
    redis_url: str,
    sender: Celery,
    fin_simulator: Callable[..., Any],
    celery_worker_proc: Callable[..., Any],
) -> None:
    marker = f"CUSTOMER-SECRET-{uuid.uuid4().hex}"
    dead = StreamReader(redis_client, N.dead)
    results = StreamReader(redis_client, N.results)
    sim = fin_simulator()
    worker = celery_worker_proc(base_url=sim.base_url, concurrency=2)

    cid = f"oc-{uuid.uuid4().hex[:6]}"
    body = {"author": "user", "body": marker}
    relay = {"metadata": {"order": 7}, "correlation_id": "corr-7"}
    ids = {name: str(uuid.uuid4()) for name in ("unknown", "builtin", "unknown_ev", "posargs",
                                                 "posargs_ev", "posargs_seq", "pickle", "not_json",
                                                 "not_a_list")}  # fmt: skip
    # an unknown task name, on each queue
    sender.send_task(
        "fin.summarise",
        kwargs={"conversation_id": cid, "message": body},
        queue="fin.calls",
        task_id=ids["unknown"],
    )
    sender.send_task(
        "fin.event_v2",
        kwargs={"event": {"conversation_id": cid, "text": marker}},
        queue="fin.events",
        task_id=ids["unknown_ev"],
    )
    # one of Celery's built-in tasks (registered in every worker; it would log its arguments
    # as its return value)
    sender.send_task("celery.accumulate", args=[marker], queue="fin.calls", task_id=ids["builtin"])
    # fin-relay tasks with positional arguments (Celery's client puts their repr in headers)
    sender.send_task(
        "fin.start",
        args=[cid, {"id": "u-1"}, body],
        kwargs={"relay": relay},
        queue="fin.calls",
        task_id=ids["posargs"],
    )
    # ... one with its conversation in the keyword arguments: the take numbers it, and its dead
    # letter must release the number, or the valid job below would wait for it
    sender.send_task(
        "fin.start",
        args=["urgent"],
        kwargs=start_kwargs(cid, marker),
        queue="fin.calls",
        task_id=ids["posargs_seq"],
    )
    sender.send_task(
        "fin.event",
        args=[{"event_name": "fin_replied", "conversation_id": cid, "text": marker}],
        queue="fin.events",
        task_id=ids["posargs_ev"],
    )
    # a body the worker must not decode (pickle), one that is not JSON, one of the wrong shape
    sender.send_task(
        "fin.start",
        kwargs=start_kwargs(cid, marker),
        queue="fin.calls",
        task_id=ids["pickle"],
        serializer="pickle",
    )
    redis_client.lpush(
        "fin.calls",
        kombu_message("fin.start", ids["not_json"], "fin.calls", f'[[], {{"x": "{marker}'.encode()),
    )
    redis_client.lpush(
        "fin.calls",
        kombu_message(
            "fin.reply", ids["not_a_list"], "fin.calls", json.dumps({"m": marker}).encode()
        ),
    )

    expected = {
        "unknown": ("unknown_task", "job.dead", "fin.summarise", "fin.calls"),
        "builtin": ("unknown_task", "job.dead", "celery.accumulate", "fin.calls"),
        "unknown_ev": ("unknown_task", "event.dead", "fin.event_v2", "fin.events"),
        "posargs": ("positional_arguments", "job.dead", "fin.start", "fin.calls"),
        "posargs_ev": ("positional_arguments", "event.dead", "fin.event", "fin.events"),
        "posargs_seq": ("positional_arguments", "job.dead", "fin.start", "fin.calls"),
        "pickle": ("undecodable_message", "job.dead", "fin.start", "fin.calls"),
        "not_json": ("undecodable_message", "job.dead", "fin.start", "fin.calls"),
        "not_a_list": ("invalid_message", "job.dead", "fin.reply", "fin.calls"),
    }
    letters: dict[str, dict[str, Any]] = {}
    for name, (reason, kind, task, queue) in expected.items():
        task_id = ids[name]
        letter = dead.wait_for_id(f"{task_id}.dead.{reason}", timeout_s=30)
        letters[name] = letter
        assert letter["type"] == kind, name
        data = letter["data"]
        assert (data["reason"], data["task"], data["task_id"], data["queue"]) == (
            reason,
            task,
            task_id,
            queue,
        ), name
        assert data["dead_id"] == task_id and data["error"], name
        payload = json.loads(redis_client.get(N.dead_payload(task_id)) or "null")
        assert payload["task"] == task and payload["task_id"] == task_id, name

    # what is kept for replay or inspection, per kind of message
    def kept(name: str) -> dict[str, Any]:
        return json.loads(redis_client.get(N.dead_payload(ids[name])) or "null")

    assert kept("unknown")["kwargs"] == {"conversation_id": cid, "message": body}
    assert kept("builtin")["args"] == [marker]
    assert kept("posargs")["args"] == [cid, {"id": "u-1"}, body]
    assert kept("posargs")["kwargs"] == {"relay": relay}
    assert kept("posargs_ev")["args"][0]["text"] == marker
    pickled = kept("pickle")["raw"]
    assert pickled["content_type"] == "application/x-python-serialize" and pickled["body_base64"]
    assert marker in base64.b64decode(kept("not_json")["raw"]["body_base64"]).decode()
    assert "positional argument" in letters["posargs"]["data"]["error"]
    assert letters["posargs"]["data"]["error"].endswith("(keyword arguments given: relay)")
    assert letters["unknown"]["conversation_id"] == cid  # from the kwargs, when there is one
    assert letters["pickle"]["conversation_id"] is None

    # a call task name is answered call.failed too (a producer waiting on it is not left hanging)
    failed = results.wait_for_id(f"{ids['posargs']}.failed.positional_arguments")
    # its conversation id would be a positional argument: not interpreted, so none
    assert failed["type"] == "call.failed" and failed["conversation_id"] is None
    assert failed["data"]["job_id"] == ids["posargs"] and failed["data"]["operation"] == "start"
    assert failed["data"]["metadata"] == {"order": 7}
    assert failed["data"]["correlation_id"] == "corr-7"
    results.wait_for_id(f"{ids['pickle']}.failed.undecodable_message")
    assert not results.matching(lambda e: e["data"].get("job_id") == ids["unknown"])

    # the worker still runs valid jobs, and Celery never dropped or dumped a message; the
    # conversation's next job is not held back by the sequence number of the dead one (the
    # hold bound is 60 s here)
    assert letters["posargs_seq"]["conversation_id"] == cid
    assert redis_client.hget(N.job(ids["posargs_seq"]), "seq") == "1"  # the take numbered it
    job_id = enqueue_job(redis_client, "fin.start", start_kwargs(cid, "a valid job"))
    valid = wait_for_result(redis_client, job_id, timeout_s=30)
    assert valid.type == "call.succeeded" and valid.data["seq"] == 2
    assert worker.alive()
    log_text = worker.logs()
    assert marker not in log_text
    assert "Received unregistered task" not in log_text
    assert "Can't decode message body" not in log_text
    assert "Received invalid task message" not in log_text
    for name, (reason, *_rest) in expected.items():
        assert f"id={ids[name]}" in log_text and f"dead-lettered: {reason}" in log_text, name

    # the marker is in the dead payloads only: not in the streams, the job hashes, the queues
    holders = where_is(redis_client, marker)
    assert holders, "the marker should at least be kept for replay"
    assert all(key.startswith("fin:deadpayload:") for key in holders), holders
    assert redis_client.llen("fin.calls") == 0 and redis_client.llen("fin.events") == 0

    # every dead and result entry's fields agree with its envelope
    for stream in (N.dead, N.results):
        for _entry_id, fields in redis_client.xrange(stream):
            assert fields_agree(fields, Envelope.from_stream_fields(fields)), fields

    # replay refuses what cannot be replayed as it was
    producer = Producer(load(ProducerSettings, redis_url=redis_url))
    try:
        for name, needle in (
            ("posargs", "positional arguments"),
            ("pickle", "could not be decoded"),
            ("unknown", "unknown task"),
        ):
            with pytest.raises(DeadLetterError, match=needle):
                replay(producer, ids[name])
    finally:
        producer.close()


def test_results_events_and_dead_letters_fields_agree_with_envelopes(
    redis_client: redis.Redis,
    fin_simulator: Callable[..., Any],
    celery_worker_proc: Callable[..., Any],
) -> None:
    """Through a real worker, with and without a conversation: a call without one
    (``fin.capabilities``), an event without one (``event.dead``), and their counterparts with
    one. Each stream entry's ``conversation_id`` field is absent exactly when the envelope's is
    ``null``, and never ``""``."""
    dead = StreamReader(redis_client, N.dead)
    events = StreamReader(redis_client, N.events)
    sim = fin_simulator()
    celery_worker_proc(base_url=sim.base_url, concurrency=2)
    capabilities = enqueue_job(redis_client, "fin.capabilities", {"user": {"id": "u-1"}})
    start = enqueue_job(redis_client, "fin.start", start_kwargs("agree-1"))
    for event_id, event in (
        ("ev-no-conv", {"event_name": "fin_replied", "created_at_ms": "2026-01-01T00:00:00Z"}),
        ("ev-empty-conv", {"event_name": "fin_replied", "conversation_id": ""}),
        ("ev-ok", {"event_name": "fin_typing", "conversation_id": "agree-1"}),
    ):
        enqueue_job(
            redis_client,
            "fin.event",
            {"event": event, "event_id": event_id, "received_at_ms": 1},
            task_id=event_id,
        )
    assert wait_for_result(redis_client, capabilities).conversation_id is None
    assert wait_for_result(redis_client, start).conversation_id == "agree-1"
    for event_id in ("ev-no-conv", "ev-empty-conv"):
        assert dead.wait_for_id(f"{event_id}.dead")["conversation_id"] is None
    assert events.wait_for_id("ev-ok")["conversation_id"] == "agree-1"

    checked = {True: 0, False: 0}  # with / without a conversation
    for stream in (N.results, N.events, N.dead):
        for _entry_id, fields in redis_client.xrange(stream):
            envelope = Envelope.from_stream_fields(fields)
            assert fields_agree(fields, envelope), (stream, fields)
            assert fields.get("conversation_id") != ""
            checked[envelope.conversation_id is not None] += 1
    assert checked[True] >= 2 and checked[False] >= 3, checked


def test_a_queue_item_that_is_not_a_broker_message_can_be_dead_lettered(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the broker transport would call for an item it cannot decode at all (``"not
    json"``, a JSON list): kept whole in the dead payload, content-derived id, nothing else."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("FIN_API_TOKEN", "t")
    marker = f"RAW-{uuid.uuid4().hex}"
    dead = StreamReader(redis_client, N.dead)
    rt = Runtime.build(load(WorkerSettings))
    try:
        assert dead_letter_broker_item("fin.calls", f"not json {marker}".encode(), rt)
        assert dead_letter_broker_item("fin.events", json.dumps([1, marker]), rt)
    finally:
        rt.close()
    first, second = dead.matching(lambda e: e["data"]["reason"] == "undecodable_message")
    assert (first["type"], first["data"]["queue"]) == ("job.dead", "fin.calls")
    assert (second["type"], second["data"]["queue"]) == ("event.dead", "fin.events")
    assert first["data"]["task_id"].startswith("offcontract-")
    assert first["data"]["task_id"] == broker_item_verdict("x", f"not json {marker}").task_id
    raw = json.loads(redis_client.get(N.dead_payload(first["data"]["task_id"])) or "")["raw"]
    assert base64.b64decode(raw["body_base64"]).decode() == f"not json {marker}"
    assert not where_is(redis_client, marker)  # in plain text nowhere: base64 in the payload


@pytest.mark.redis_broker
def test_a_worker_dead_letters_raw_queue_items_and_keeps_consuming(
    redis_client: redis.Redis, fin_simulator: Callable, celery_worker_proc: Callable
) -> None:
    """Raw text and a JSON list pushed by hand onto fin.calls: kombu would stop the worker
    ("Unrecoverable error"); the worker dead-letters both and runs the next job."""
    sim = fin_simulator()
    worker = celery_worker_proc(base_url=sim.base_url)
    marker = f"RAW-{uuid.uuid4().hex}"
    dead = StreamReader(redis_client, N.dead)
    redis_client.lpush("fin.calls", f"not json {marker}")
    redis_client.lpush("fin.calls", json.dumps([1, marker]))

    def undecodable(e: dict) -> bool:
        return e["data"]["reason"] == "undecodable_message"

    dead.wait_for(undecodable, what="first raw item dead-lettered")
    dead.wait_for(lambda e: undecodable(e) and len(dead.matching(undecodable)) >= 2, what="second")
    found = dead.matching(undecodable)
    assert len(found) == 2 and {e["data"]["queue"] for e in found} == {"fin.calls"}
    job = enqueue_job(redis_client, "fin.start", start_kwargs("after-raw"))
    assert wait_for_result(redis_client, job).type == "call.succeeded"
    assert worker.alive()
    assert marker not in worker.logs()

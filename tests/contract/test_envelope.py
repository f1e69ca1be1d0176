from __future__ import annotations

import json

import pytest
import redis

from fin_relay.contract.envelope import Envelope, fields_agree, stream_conversation_id
from fin_relay.contract.jobs import DEAD_EVENT, DEAD_JOB, dead_letter
from fin_relay.contract.names import Names
from fin_relay.contract.publish import add_publish, publish

N = Names("fin")


def test_envelope_shape_and_stream_fields() -> None:
    env = Envelope.now(id="e1", type="fin_replied", conversation_id="ext-123", data={"a": 1})
    body = json.loads(env.to_json())
    assert set(body) == {"id", "type", "conversation_id", "occurred_at", "data"}
    assert body["occurred_at"].endswith("Z") and len(body["occurred_at"]) == 24
    fields = env.stream_fields()
    assert set(fields) == {"type", "conversation_id", "envelope"}
    assert Envelope.from_stream_fields(fields) == env
    assert Envelope.from_stream_fields({k.encode(): v.encode() for k, v in fields.items()}) == env
    assert fields_agree(fields, env) and stream_conversation_id(fields) == "ext-123"


@pytest.mark.parametrize("cid", [None, ""])
def test_no_conversation_id_is_null_in_the_envelope_and_absent_from_the_fields(
    cid: str | None,
) -> None:
    env = Envelope.now(id="d1", type="event.dead", conversation_id=cid, data={})
    assert env.conversation_id is None
    assert json.loads(env.to_json())["conversation_id"] is None
    fields = env.stream_fields()
    assert set(fields) == {"type", "envelope"}
    assert fields_agree(fields, env) and stream_conversation_id(fields) is None
    assert Envelope.from_stream_fields(fields) == env


def test_fields_agree_checks_type_and_conversation_id_both_ways() -> None:
    env = Envelope.now(id="r1", type="call.failed", conversation_id="c1", data={})
    null = Envelope.now(id="r2", type="call.failed", conversation_id=None, data={})
    fields = env.stream_fields()
    assert not fields_agree({**fields, "conversation_id": "c2"}, env)
    assert not fields_agree({**fields, "type": "call.succeeded"}, env)
    assert not fields_agree({"type": "call.failed", "envelope": env.to_json()}, env)
    assert not fields_agree({**null.stream_fields(), "conversation_id": "c1"}, null)
    # entries written before this rule said "" for null: still readable, agree only leniently
    legacy = {**null.stream_fields(), "conversation_id": ""}
    assert Envelope.from_stream_fields(legacy) == null
    assert not fields_agree(legacy, null) and fields_agree(legacy, null, strict=False)
    assert stream_conversation_id(legacy) is None


def test_from_stream_fields_refuses_what_is_not_an_envelope() -> None:
    with pytest.raises(ValueError, match="no 'envelope' field"):
        Envelope.from_stream_fields({"type": "x"})
    with pytest.raises(ValueError):
        Envelope.from_stream_fields({"envelope": "{not json"})


def test_published_and_dead_letter_entries_agree_in_redis(redis_client: redis.Redis) -> None:
    """Results, events and dead letters written to a real Redis, with and without a
    conversation: every entry's fields agree with its envelope, and only an envelope with a
    conversation reaches a conversation channel."""
    client = redis_client
    pubsub = client.pubsub()
    pubsub.psubscribe(N.conversation_channel("*"))
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"  # type: ignore[index]
    with_cid = Envelope.now(id="ev1", type="fin_replied", conversation_id="c1", data={})
    without = Envelope.now(id="res1", type="call.succeeded", conversation_id=None, data={})
    publish(client, N, [(N.events, with_cid), (N.results, without)], maxlen=100)
    pipe = client.pipeline(transaction=True)
    for i, (cid, kind) in enumerate([(None, DEAD_EVENT), ("", DEAD_EVENT), ("c1", DEAD_JOB)]):
        dead_letter(
            pipe, N, dead_id=f"d{i}", envelope_id=f"d{i}.dead", kind=kind, task="fin.event",
            task_id=f"d{i}", kwargs={"event": {}}, reason="invalid_event", conversation_id=cid,
            data={"error": "conversation_id is missing"}, maxlen=100,
            record_entry=(N.job(f"d{i}"), "dead_entry"),
        )  # fmt: skip
    add_publish(pipe, N, N.results, without, maxlen=100, record_id=(N.job("res1"), "entry"))
    pipe.execute()
    seen: dict[str, str | None] = {}
    for stream in (N.events, N.results, N.dead):
        for entry_id, fields in client.xrange(stream):
            envelope = Envelope.from_stream_fields(fields)
            assert fields_agree(fields, envelope), (stream, fields)
            assert "conversation_id" in fields or envelope.conversation_id is None
            assert fields.get("conversation_id") != ""
            seen[envelope.id] = envelope.conversation_id
            if stream == N.dead:
                assert client.hget(N.job(envelope.data["dead_id"]), "dead_entry") == entry_id
    assert seen == {"ev1": "c1", "res1": None, "d0.dead": None, "d1.dead": None, "d2.dead": "c1"}
    channels = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        channels.append((message["channel"], json.loads(message["data"])["id"]))
    assert sorted(channels) == [(N.conversation_channel("c1"), "d2.dead"),
                                (N.conversation_channel("c1"), "ev1")]  # fmt: skip
    pubsub.close()

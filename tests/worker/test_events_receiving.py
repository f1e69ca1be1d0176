"""Receiving Fin's webhooks end to end: signed requests over real HTTP to a real ``fin-relay
ingest``, a real Celery worker process, a real Redis; every wait is an ``XREAD BLOCK`` on the
stream (or a pub/sub read), never a sleep.

One test per receiving case: every authentic event reaches ``{ns}:events`` and its
conversation's channel with its whole payload, whatever Fin adds (new event names, status
values, fields) or gets wrong (fields of unexpected types); only what cannot be an event is
dead-lettered; the conversation state moves only for a parsed event with a known status.

The ingest and the worker are started once for the module (Redis is flushed then, not per
test); every test uses conversation ids of its own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fin_relay.contract.celery_wire import task_message
from fin_relay.contract.fin_api import format_fin_time
from fin_relay.contract.names import Names
from fin_relay.embedded_redis import EmbeddedRedis
from fin_relay.webhook_ingest.verify import sign
from fin_relay.worker.sequencing import Sequencer
from tests.fixtures.broker import rabbitmq_wanted
from tests.fixtures.ingest import (
    SIGNATURE_HEADER,
    IngestServer,
    StreamReader,
    dedup_marks,
    launch_ingest,
    sign_body,
    webhook_headers,
)
from tests.fixtures.worker import (
    WorkerProcess,
    spawn_worker,
    wait_ready,
    wait_until,
    worker_command,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.redis_broker, pytest.mark.timeout(180)]

N = Names("fin")
HEX_SECRET = "7d1f0c9a3be24e58a6c1d0f2b4e6a8c0"  # a signing secret that is a hex string


@dataclass
class Rig:
    ingest: IngestServer
    worker: WorkerProcess
    client: redis.Redis
    http: httpx.Client
    redis_url: str
    log_dir: Path


@pytest.fixture(scope="module")
def rig(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if rabbitmq_wanted():
        pytest.skip("the ingest enqueues on the Redis broker: not part of the RabbitMQ run")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    log_dir = tmp_path_factory.mktemp("receiving")
    started: list[IngestServer] = []
    worker: WorkerProcess | None = None
    try:
        ingest = launch_ingest(redis_server.url, log_dir, started=started)
        hostname = f"recv-{uuid.uuid4().hex[:6]}@test"
        worker = spawn_worker(
            # one thread: events are processed in the order they were accepted, so an event
            # published after another proves the other one was handled
            worker_command(hostname, "threads", 1, "fin.calls,fin.events"),
            worker_env(redis_server.url, "http://127.0.0.1:9", "sim-token", "fin", {}),
            log_dir / "worker.log",
            hostname=hostname,
            namespace="fin",
        )
        wait_ready(worker, redis_server.url, 30)
        with httpx.Client(timeout=15.0) as http:
            yield Rig(ingest, worker, client, http, redis_server.url, log_dir)
    finally:
        if worker is not None:
            worker.stop(timeout_s=10)
        for server in started:
            server.stop()
        client.close()


@pytest.fixture
def events(rig: Rig) -> StreamReader:
    """``fin:events`` from the start of the test on."""
    return StreamReader(rig.client, N.events)


@pytest.fixture
def dead(rig: Rig) -> StreamReader:
    """``fin:dead`` from the start of the test on."""
    return StreamReader(rig.client, N.dead)


def now_iso(delta_s: float = 0.0) -> str:
    return format_fin_time(datetime.now(UTC) + timedelta(seconds=delta_s))


def conv(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def encode(event: dict[str, Any]) -> bytes:
    """Compact, non-ASCII kept: the published envelope must contain exactly these bytes."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def deliver(rig: Rig, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    """POST ``body`` to the ingest, signed like Fin does unless ``headers`` are given."""
    return rig.http.post(
        rig.ingest.webhook_url,
        content=body,
        headers=headers if headers is not None else webhook_headers(body),
    )


def accepted(rig: Rig, event: dict[str, Any]) -> bytes:
    body = encode(event)
    response = deliver(rig, body)
    assert (response.status_code, response.json()) == (202, {"status": "accepted"})
    return body


class Channel:
    """A subscription to one conversation's channel (subscribed before anything is sent)."""

    def __init__(self, client: redis.Redis, conversation_id: str) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(N.conversation_channel(conversation_id))
        # wait for the subscription to be confirmed, so no publish can be missed
        confirm = self.pubsub.get_message(timeout=5.0)
        assert confirm is not None and confirm["type"] == "subscribe"

    def next(self, timeout_s: float = 10.0) -> dict[str, Any]:
        message = self.pubsub.get_message(timeout=timeout_s)
        assert message is not None, "nothing published on the conversation channel"
        assert message["type"] == "message"
        return dict(json.loads(message["data"]))

    def close(self) -> None:
        self.pubsub.close()


@pytest.fixture
def channels(rig: Rig) -> Iterator[Callable[[str], Channel]]:
    opened: list[Channel] = []

    def open_channel(conversation_id: str) -> Channel:
        channel = Channel(rig.client, conversation_id)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        channel.close()


def state_of(rig: Rig, conversation_id: str) -> dict[str, str]:
    return dict(rig.client.hgetall(N.conversation_state(conversation_id)))


def set_state(rig: Rig, conversation_id: str, **fields: str) -> dict[str, str]:
    key = N.conversation_state(conversation_id)
    rig.client.hset(key, mapping=fields)
    rig.client.expire(key, 3600)
    return state_of(rig, conversation_id)


def turn_in_progress_state(rig: Rig, conversation_id: str) -> dict[str, str]:
    """The state a successful start call leaves: Fin is working on the turn."""
    call_ms = str(int((datetime.now(UTC) - timedelta(seconds=5)).timestamp() * 1000))
    return set_state(
        rig,
        conversation_id,
        status="thinking",
        turn_in_progress="1",
        turn_started_at_ms=call_ms,
        call_at_ms=call_ms,
        status_at_ms=call_ms,
        updated_at_ms=call_ms,
    )


def assert_published_whole(
    rig: Rig,
    events: StreamReader,
    dead: StreamReader,
    channel: Channel,
    body: bytes,
) -> dict[str, Any]:
    """The event is on ``fin:events`` and its channel with exactly the received JSON object,
    under its own name, and was not dead-lettered. Returns the envelope."""
    event = json.loads(body)
    envelope = events.wait_for(
        lambda e: e["conversation_id"] == event["conversation_id"] and e["data"] == event,
        what=f"{event['event_name']} of {event['conversation_id']}",
    )
    assert envelope["type"] == event["event_name"]
    assert envelope["conversation_id"] == event["conversation_id"]
    assert envelope["data"] == event
    # byte for byte: the envelope's data is the received object as sent (order, spelling)
    assert '"data":' + body.decode() in events.raw_by_id[envelope["id"]]
    assert channel.next() == envelope
    assert not dead.matching(lambda e: e["conversation_id"] == event["conversation_id"])
    assert not dead.matching(lambda e: e["data"].get("dead_id") == envelope["id"])
    return envelope


def worker_log_lines(rig: Rig, needle: str) -> list[str]:
    return [line for line in rig.worker.logs().splitlines() if needle in line]


def unexpected_logged(rig: Rig, event_id: str) -> list[str]:
    """The INFO line(s) the worker wrote about an event's unknown or unexpected fields, read
    once the worker has logged the event as published: that line comes last, and every line
    is written after the envelope is on the stream."""
    wait_until(
        lambda: worker_log_lines(rig, f"event={event_id} conv="),
        10,
        f"the worker's line for the published event {event_id}",
    )
    return worker_log_lines(rig, f"event={event_id} name=")


def status_event(conversation_id: str, status: Any, created: str | None = None) -> dict[str, Any]:
    return {
        "event_name": "fin_status_updated",
        "conversation_id": conversation_id,
        "user_id": "u-1",
        "status": status,
        "created_at_ms": created or now_iso(),
    }


# --- every authentic event is published ------------------------------------------------------


def test_unknown_status_is_published_whole_not_dead_lettered_state_and_turn_unchanged(
    rig: Rig,
    events: StreamReader,
    dead: StreamReader,
    channels: Callable[[str], Channel],
) -> None:
    busy, idle, fresh = conv("unk-busy"), conv("unk-idle"), conv("unk-fresh")
    busy_state = turn_in_progress_state(rig, busy)
    idle_state = set_state(rig, idle, status="awaiting_user_reply", turn_in_progress="0")
    sequencer = Sequencer(rig.client, N)

    def reply_decision(conversation_id: str) -> str:
        """What the sequencer says to the conversation's next reply (one job, asked again)."""
        return sequencer.check(
            f"reply-of-{conversation_id}",
            conversation_id,
            message_time=None,
            sequence=None,
            wait_turn=True,
            hold_max_ms=60_000,
        ).decision

    assert reply_decision(busy) == "wait_turn"
    for conversation_id, before in ((busy, busy_state), (idle, idle_state), (fresh, {})):
        channel = channels(conversation_id)
        body = accepted(rig, status_event(conversation_id, "pondering_v99"))
        envelope = assert_published_whole(rig, events, dead, channel, body)
        assert state_of(rig, conversation_id) == before  # neither clears nor sets the turn
        [line] = unexpected_logged(rig, envelope["id"])
        assert json.loads(line)["level"] == "info"
        assert json.loads(line)["msg"].endswith(
            "name=fin_status_updated unknown or unexpected fields: status (literal_error); "
            "published as received, conversation state unchanged"
        )
    assert reply_decision(busy) == "wait_turn"  # the turn still holds replies back
    assert reply_decision(idle) == "go"  # and an idle conversation was not made busy
    assert "pondering_v99" not in rig.worker.logs()  # field names, never values

    # the next known turn end clears the turn, as before
    channel = channels(busy)
    body = accepted(rig, status_event(busy, "awaiting_user_reply", now_iso(1)))
    assert_published_whole(rig, events, dead, channel, body)
    assert state_of(rig, busy)["turn_in_progress"] == "0"
    assert state_of(rig, busy)["status"] == "awaiting_user_reply"
    assert reply_decision(busy) == "go"


def test_unknown_event_name_is_published_whole(
    rig: Rig, events: StreamReader, dead: StreamReader, channels: Callable[[str], Channel]
) -> None:
    cid = conv("unk-name")
    channel = channels(cid)
    body = accepted(
        rig,
        {
            "event_name": "fin_mood_changed",
            "conversation_id": cid,
            "created_at_ms": now_iso(),
            "mood": {"value": "cheerful", "confidence": 0.93, "tags": ["ü", None, 1]},
        },
    )
    envelope = assert_published_whole(rig, events, dead, channel, body)
    assert envelope["type"] == "fin_mood_changed"
    assert not rig.client.exists(N.conversation_state(cid))
    [line] = unexpected_logged(rig, envelope["id"])
    assert "name=fin_mood_changed" in line and "event_name (unknown event)" in line


def test_unknown_event_name_without_created_at_is_published_whole(
    rig: Rig, events: StreamReader, dead: StreamReader, channels: Callable[[str], Channel]
) -> None:
    cid = conv("unk-untimed")
    channel = channels(cid)
    body = accepted(rig, {"event_name": "fin_typing", "conversation_id": cid, "n": 1})
    assert_published_whole(rig, events, dead, channel, body)


def test_extra_fields_and_new_message_fields_are_published_whole(
    rig: Rig, events: StreamReader, dead: StreamReader, channels: Callable[[str], Channel]
) -> None:
    cid = conv("extra")
    channel = channels(cid)
    body = accepted(
        rig,
        {
            "event_name": "fin_replied",
            "conversation_id": cid,
            "user_id": "u-1",
            "status": "replying",
            "created_at_ms": now_iso(),
            "stream_id": "s-1",
            "message": {
                "id": f"m-{cid}",
                "author": "fin",
                "body": "<p>Ça marche</p>",
                "timestamp_ms": now_iso(-1),
                "format": "markdown",  # 2.17
                "sources": [{"type": "article", "id": 12, "title": "Refunds", "url": None}],
                "future_message_field": {"x": [1.5, True]},
            },
            "brand_new_top_level": {"deep": {"er": ["a", 2]}},
            "another_one": 12345678901234567890,
        },
    )
    envelope = assert_published_whole(rig, events, dead, channel, body)
    assert envelope["id"] == f"msg_m-{cid}"
    assert envelope["data"]["message"]["sources"][0]["title"] == "Refunds"
    assert state_of(rig, cid)["status"] == "replying"  # a known shape: the state moves
    assert unexpected_logged(rig, envelope["id"]) == []


MALFORMED: dict[str, tuple[Callable[[str], dict[str, Any]], bool]] = {
    # name: (event for a conversation id, whether the conversation state changes)
    "fin_replied_without_message_id": (
        lambda cid: {
            "event_name": "fin_replied",
            "conversation_id": cid,
            "user_id": "u",
            "status": "awaiting_user_reply",
            "created_at_ms": now_iso(),
            "message": {"author": "fin", "body": "hi", "timestamp_ms": now_iso()},
        },
        True,  # message.id is optional: it parses, the status is known
    ),
    "status_not_a_string": (lambda cid: status_event(cid, 42), False),
    "status_null": (lambda cid: status_event(cid, None), False),
    "fin_replied_without_message": (
        lambda cid: {
            "event_name": "fin_replied",
            "conversation_id": cid,
            "user_id": "u",
            "status": "awaiting_user_reply",
            "created_at_ms": now_iso(),
        },
        False,
    ),
    "fin_replied_message_a_string": (
        lambda cid: {
            "event_name": "fin_replied",
            "conversation_id": cid,
            "user_id": "u",
            "status": "complete",
            "created_at_ms": now_iso(),
            "message": "hello",
        },
        False,
    ),
    "status_event_without_created_at": (
        lambda cid: {
            k: v for k, v in status_event(cid, "complete").items() if k != "created_at_ms"
        },
        False,  # accepted by the ingest (no replay check possible), not parsed: no state
    ),
    "chunk_index_a_string": (
        lambda cid: {
            "event_name": "fin_reply_chunk",
            "conversation_id": cid,
            "stream_id": "s",
            "chunk_index": "zero",
            "chunk_text": "Hel",
            "created_at_ms": now_iso(),
        },
        False,
    ),
    "csat_options_not_a_list": (
        lambda cid: {
            "event_name": "csat_requested",
            "conversation_id": cid,
            "user_id": "u",
            "created_at_ms": now_iso(),
            "csat": {"options": "good"},
        },
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_known_event_with_a_malformed_field_is_published_whole(
    rig: Rig,
    events: StreamReader,
    dead: StreamReader,
    channels: Callable[[str], Channel],
    case: str,
) -> None:
    make, state_moves = MALFORMED[case]
    cid = conv(case.replace("_", "-"))
    before = turn_in_progress_state(rig, cid)
    channel = channels(cid)
    envelope = assert_published_whole(rig, events, dead, channel, accepted(rig, make(cid)))
    after = state_of(rig, cid)
    if state_moves:
        assert after != before and after["turn_in_progress"] == "0"
        assert unexpected_logged(rig, envelope["id"]) == []
    else:
        assert after == before
        [line] = unexpected_logged(rig, envelope["id"])
        assert "unknown or unexpected fields" in line


def test_2_17_thinking_and_complete_statuses(
    rig: Rig, events: StreamReader, dead: StreamReader, channels: Callable[[str], Channel]
) -> None:
    cid = conv("v217")
    turn_in_progress_state(rig, cid)
    channel = channels(cid)
    thinking = accepted(rig, status_event(cid, "thinking", now_iso(1)))
    assert_published_whole(rig, events, dead, channel, thinking)
    assert state_of(rig, cid)["status"] == "thinking"
    assert state_of(rig, cid)["turn_in_progress"] == "1"
    complete = accepted(
        rig,
        {
            "event_name": "fin_replied",
            "conversation_id": cid,
            "user_id": "u-1",
            "status": "complete",
            "created_at_ms": now_iso(2),
            "message": {
                "id": f"m-{cid}",
                "author": "fin",
                "body": "**Done**",
                "format": "markdown",
                "sources": [],
            },
        },
    )
    envelope = assert_published_whole(rig, events, dead, channel, complete)
    state = state_of(rig, cid)
    assert state["status"] == "complete" and state["turn_in_progress"] == "0"
    assert unexpected_logged(rig, envelope["id"]) == []


def test_fin_reply_chunk_is_published_whole(
    rig: Rig, events: StreamReader, dead: StreamReader, channels: Callable[[str], Channel]
) -> None:
    cid = conv("chunk")
    before = turn_in_progress_state(rig, cid)
    channel = channels(cid)
    for index, text in enumerate(["Hel", "lo ", "there"]):
        body = accepted(
            rig,
            {
                "event_name": "fin_reply_chunk",
                "conversation_id": cid,
                "stream_id": f"s-{cid}",
                "chunk_index": index,
                "chunk_text": text,
                "status": "replying",
                "created_at_ms": now_iso(),
            },
        )
        assert_published_whole(rig, events, dead, channel, body)
    assert state_of(rig, cid) == before  # chunks never moved the state


# --- signatures --------------------------------------------------------------------------------


def test_signature_without_the_prefix_is_accepted(
    rig: Rig, events: StreamReader, dead: StreamReader, channels: Callable[[str], Channel]
) -> None:
    cid = conv("bare-sig")
    channel = channels(cid)
    body = encode(status_event(cid, "escalated"))
    bare = sign_body(body).removeprefix("sha256=")
    assert len(bare) == 64
    headers = {**webhook_headers(body, None), SIGNATURE_HEADER: bare}
    assert deliver(rig, body, headers).status_code == 202
    assert_published_whole(rig, events, dead, channel, body)
    assert state_of(rig, cid)["escalated"] == "1"


def test_secret_used_hex_decoded_is_accepted_and_utf8_pinning_refuses_it(
    rig: Rig,
    events: StreamReader,
    dead: StreamReader,
    channels: Callable[[str], Channel],
    start_ingest: Callable[..., IngestServer],
) -> None:
    auto = start_ingest(rig.redis_url, secrets=("older-plain-secret", HEX_SECRET))
    pinned = start_ingest(
        rig.redis_url,
        secrets=(HEX_SECRET,),
        env={"FIN_RELAY_WEBHOOK_SECRET_ENCODING": "utf8"},
    )
    cid = conv("hex-key")
    channel = channels(cid)
    body = encode(status_event(cid, "resolved"))
    key = bytes.fromhex(HEX_SECRET)  # Fin keyed the HMAC with the decoded bytes
    hex_headers = {**webhook_headers(body, None), SIGNATURE_HEADER: sign(body, key)}

    marks = dedup_marks(rig.client)
    refused = rig.http.post(pinned.webhook_url, content=body, headers=hex_headers)
    assert (refused.status_code, refused.json()) == (401, {"error": "invalid_signature"})
    assert dedup_marks(rig.client) == marks  # nothing enqueued

    response = rig.http.post(auto.webhook_url, content=body, headers=hex_headers)
    assert (response.status_code, response.json()) == (202, {"status": "accepted"})
    assert_published_whole(rig, events, dead, channel, body)

    # the UTF-8 derivation of the same secret is accepted by both; each derivation is logged
    # once per process, however often it matches
    utf8_body = encode(status_event(cid, "resolved", now_iso(1)))
    utf8_headers = {**webhook_headers(utf8_body, None), SIGNATURE_HEADER: sign_body(utf8_body, HEX_SECRET)}  # fmt: skip
    answers = [
        rig.http.post(server.webhook_url, content=utf8_body, headers=utf8_headers).status_code
        for server in (auto, pinned, auto)
    ]
    assert answers == [202, 200, 200]  # new, then duplicates (one Redis)
    again = encode(status_event(cid, "resolved", now_iso(2)))
    again_headers = {**webhook_headers(again, None), SIGNATURE_HEADER: sign(again, key)}
    assert rig.http.post(auto.webhook_url, content=again, headers=again_headers).status_code == 202

    def logged(server: IngestServer, needle: str) -> int:
        return sum(needle in line for line in server.log_text().splitlines())

    hex_line = "webhook signatures match the signing secret's hex-decoded bytes"
    utf8_line = "webhook signatures match the signing secret's UTF-8 bytes"
    wait_until(lambda: logged(auto, utf8_line), 10, "the ingest's log line")
    assert logged(auto, hex_line) == 1 and logged(auto, utf8_line) == 1
    assert "FIN_RELAY_WEBHOOK_SECRET_ENCODING=hex to pin it" in auto.log_text()
    assert logged(pinned, hex_line) == 0 and logged(pinned, utf8_line) == 1
    for server in (auto, pinned):
        assert HEX_SECRET not in server.log_text() and key.hex() not in server.log_text()


# --- the settings page's test request ---------------------------------------------------------


@pytest.mark.parametrize("signature", ["unsigned", "badly_signed", "validly_signed"])
def test_test_request_is_200_and_nothing_is_enqueued(
    rig: Rig,
    events: StreamReader,
    dead: StreamReader,
    channels: Callable[[str], Channel],
    signature: str,
) -> None:
    cid = conv(f"ping-{signature}")
    body = encode({"type": "notification_event", "conversation_id": cid, "data": {"id": 1}})
    headers = webhook_headers(body, None)
    if signature == "badly_signed":
        headers[SIGNATURE_HEADER] = sign_body(body, "not-the-secret")
    elif signature == "validly_signed":
        headers[SIGNATURE_HEADER] = sign_body(body)
    marks = dedup_marks(rig.client)
    response = deliver(rig, body, headers)
    assert (response.status_code, response.json()) == (200, {"status": "ignored"})
    assert dedup_marks(rig.client) == marks  # the ingest enqueued nothing (mark = enqueue)
    # an event accepted afterwards is handled after anything enqueued before it (one thread):
    # once it is published, nothing of the test request was published or dead-lettered
    sentinel_channel = channels(cid + "-after")
    sentinel = accepted(rig, status_event(cid + "-after", "escalated"))
    assert_published_whole(rig, events, dead, sentinel_channel, sentinel)
    assert events.matching(lambda e: e["conversation_id"] == cid) == []
    assert dead.matching(lambda e: True) == []


# --- what cannot be an event ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conversation_id", "error"),
    [
        (None, "conversation_id is missing"),
        (7, "conversation_id is not a non-empty string"),
        ("", "conversation_id is not a non-empty string"),
    ],
)
def test_object_without_conversation_id_is_dead_lettered_saying_so(
    rig: Rig, events: StreamReader, dead: StreamReader, conversation_id: Any, error: str
) -> None:
    marker = uuid.uuid4().hex
    event: dict[str, Any] = {
        "event_name": "fin_status_updated",
        "user_id": "u",
        "status": "complete",
        "created_at_ms": now_iso(),
        "marker": marker,
    }
    if conversation_id is not None:
        event["conversation_id"] = conversation_id
    response = deliver(rig, encode(event))
    assert (response.status_code, response.json()) == (202, {"status": "accepted"})
    letter = dead.wait_for(lambda e: e["type"] == "event.dead", what="the dead letter")
    payload = json.loads(rig.client.get(N.dead_payload(letter["data"]["dead_id"])) or "{}")
    assert payload["kwargs"]["event"] == event  # this event's, kept whole for a replay
    assert letter["type"] == "event.dead"
    assert letter["data"]["reason"] == "invalid_event"
    assert letter["data"]["error"] == error
    assert events.matching(lambda e: e["data"].get("marker") == marker) == []


# --- duplicates and replays ------------------------------------------------------------------------


def test_duplicate_is_200_and_published_once(
    rig: Rig, events: StreamReader, dead: StreamReader, channels: Callable[[str], Channel]
) -> None:
    cid = conv("dup")
    channel = channels(cid)
    event = status_event(cid, "pondering_v99")  # an unknown status is de-duplicated as well
    body = accepted(rig, event)
    envelope = assert_published_whole(rig, events, dead, channel, body)
    reserialised = json.dumps(dict(reversed(list(event.items()))), indent=2).encode()
    for again in (body, reserialised):
        response = deliver(rig, again)
        assert (response.status_code, response.json()) == (200, {"status": "duplicate"})
    # a redelivery of the Celery message itself (same event id) publishes nothing either
    _task_id, payload = task_message(
        "fin.event", {"event": event, "event_id": envelope["id"], "received_at_ms": 1}
    )
    rig.client.lpush("fin.events", payload)
    sentinel_channel = channels(cid + "-after")
    sentinel = accepted(rig, status_event(cid + "-after", "escalated"))
    assert_published_whole(rig, events, dead, sentinel_channel, sentinel)
    assert len(events.matching(lambda e: e["conversation_id"] == cid)) == 1
    duplicate = f"event={envelope['id']} duplicate delivery"
    wait_until(lambda: worker_log_lines(rig, duplicate), 10, "the redelivery's log line")
    assert len(worker_log_lines(rig, duplicate)) == 1


def test_too_old_is_400_and_not_enqueued(rig: Rig) -> None:
    marks = dedup_marks(rig.client)
    body = encode(status_event(conv("old"), "complete", now_iso(-(24 * 3600 + 60))))
    response = deliver(rig, body)
    assert (response.status_code, response.json()) == (400, {"error": "event_too_old"})
    assert dedup_marks(rig.client) == marks

"""parse_body, check_replay, dedup_key: pure decisions on a verified body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fin_relay.webhook_ingest.events import (
    Event,
    Rejected,
    check_replay,
    created_at_ms,
    dedup_key,
    parse_body,
)

NOW_MS = 1_737_712_800_123  # 2025-01-24T10:00:00.123Z
DAY_S = 24 * 3600


def ev(**fields: Any) -> Event:
    return parse_body(json.dumps(fields).encode())


def status_event(**extra: Any) -> Event:
    base = {
        "event_name": "fin_status_updated",
        "conversation_id": "c1",
        "user_id": "u",
        "status": "escalated",
        "created_at_ms": "2025-01-24T10:00:00.123Z",
    }
    return ev(**{**base, **extra})


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b'{"a": NaN}', "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"str"', "not_an_object"),
        (b"null", "not_an_object"),
        (b'{"event_name": 3}', "invalid_event_name"),
        (b'{"event_name": ""}', "invalid_event_name"),
    ],
)
def test_parse_rejects_with_400(raw: bytes, code: str) -> None:
    with pytest.raises(Rejected) as info:
        parse_body(raw)
    assert (info.value.status, info.value.code) == (400, code)


def test_test_ping_has_no_name() -> None:
    event = parse_body(b'{"type": "ping", "conversation_id": "x"}')
    assert event.name is None and event.conversation_id == "x"


def test_created_at_parsing() -> None:
    assert created_at_ms(status_event()) == NOW_MS
    assert created_at_ms(ev(event_name="brand_new_event", conversation_id="c")) is None
    # Missing or not a timestamp, on a known event too: no time (no replay check), no refusal.
    for bad in (None, 12, "yesterday", "2025-13-01T00:00:00Z", "", ["x"]):
        assert created_at_ms(status_event(created_at_ms=bad)) is None
    assert created_at_ms(ev(event_name="brand_new_event", created_at_ms="nope")) is None
    base = {"event_name": "fin_status_updated", "conversation_id": "c", "status": "complete"}
    assert created_at_ms(ev(**base)) is None


def test_replay_check_passes_an_event_without_a_valid_time() -> None:
    for bad in (None, 12, "yesterday"):
        check_replay(status_event(created_at_ms=bad), now_ms=NOW_MS * 10, ttl_s=1)


def test_replay_window_is_the_dedup_ttl() -> None:
    event = status_event()
    check_replay(event, now_ms=NOW_MS + DAY_S * 1000, ttl_s=DAY_S)  # exactly at the TTL: ok
    with pytest.raises(Rejected) as info:
        check_replay(event, now_ms=NOW_MS + DAY_S * 1000 + 1, ttl_s=DAY_S)
    assert (info.value.status, info.value.code) == (400, "event_too_old")
    check_replay(ev(event_name="brand_new_event"), now_ms=NOW_MS, ttl_s=1)  # no timestamp


def test_dedup_key_ignores_byte_level_differences() -> None:
    a = status_event()
    b = parse_body(
        b'{ "created_at_ms":"2025-01-24T10:00:00.123Z","status":"escalated",'
        b'"conversation_id":"c1","user_id":"u","event_name":"fin_status_updated","reason":"x"}'
    )
    assert dedup_key(a) == dedup_key(b)
    assert dedup_key(a).startswith("evt_") and len(dedup_key(a)) == 36


@pytest.mark.parametrize(
    "change",
    [
        {"status": "complete"},
        {"conversation_id": "c2"},
        {"created_at_ms": "2025-01-24T10:00:00.124Z"},
        {"event_name": "other_event"},
    ],
)
def test_dedup_key_changes_with_identity_fields(change: dict[str, Any]) -> None:
    assert dedup_key(status_event()) != dedup_key(status_event(**change))


def test_fin_replied_uses_message_id() -> None:
    base = {
        "event_name": "fin_replied",
        "conversation_id": "c",
        "user_id": "u",
        "status": "replying",
        "created_at_ms": "2025-01-24T10:00:00.123Z",
    }
    one = ev(**base, message={"id": "98765", "author": "fin", "body": "<p>a</p>"})
    again = ev(
        **{**base, "created_at_ms": "2025-01-24T10:00:01.000Z"},
        message={"id": "98765", "author": "fin", "body": "<p>a</p>"},
    )
    assert dedup_key(one) == dedup_key(again) == "msg_98765"
    assert dedup_key(ev(**base, message={"id": 98765})) == "msg_98765"
    long_id = ev(**base, message={"id": "x" * 500})
    assert dedup_key(long_id).startswith("msg_") and len(dedup_key(long_id)) == 36
    no_id_a = ev(**base, message={"author": "fin", "timestamp_ms": "2025-01-24T09:01:00.456Z"})
    no_id_b = ev(**base, message={"author": "fin", "timestamp_ms": "2025-01-24T09:01:00.457Z"})
    assert dedup_key(no_id_a).startswith("evt_")
    assert dedup_key(no_id_a) != dedup_key(no_id_b)


def test_chunks_differ_by_index() -> None:
    base = {
        "event_name": "fin_reply_chunk",
        "conversation_id": "c",
        "stream_id": "s",
        "chunk_text": "a",
        "status": "replying",
        "created_at_ms": "2025-01-24T10:00:00.123Z",
    }
    assert dedup_key(ev(**base, chunk_index=0)) != dedup_key(ev(**base, chunk_index=1))


def test_known_event_without_timestamp_hashes_its_body() -> None:
    """Two different status events of one conversation without a time must not share a key
    (the field list would be equal); a re-serialised redelivery still does."""
    base = {"event_name": "fin_status_updated", "conversation_id": "c", "status": "complete"}
    a = ev(**base, user_id="u", reason="r1")
    b = parse_body(json.dumps(dict(reversed([*base.items(), ("user_id", "u"), ("reason", "r1")])),
                              indent=2).encode())  # fmt: skip
    c = ev(**base, user_id="u", reason="r2")
    d = ev(**base, user_id="u", reason="r1", created_at_ms=None)
    e = ev(**base, user_id="u", reason="r1", created_at_ms=5)
    assert dedup_key(a) == dedup_key(b) != dedup_key(c)
    assert dedup_key(a).startswith("evt_") and len(dedup_key(a)) == 36
    assert len({dedup_key(a), dedup_key(d), dedup_key(e)}) == 3
    # with a time, the key is still the identity fields (a redelivery may differ elsewhere)
    timed = {**base, "created_at_ms": "2025-01-24T10:00:00.123Z"}
    assert dedup_key(ev(**timed, reason="r1")) == dedup_key(ev(**timed, reason="r2"))


def test_unknown_event_without_timestamp_hashes_its_body() -> None:
    a = parse_body(b'{"event_name":"new_thing","x":1,"y":2}')
    b = parse_body(b'{"y":2,"x":1,"event_name":"new_thing"}')
    c = parse_body(b'{"event_name":"new_thing","x":1,"y":3}')
    assert dedup_key(a) == dedup_key(b) != dedup_key(c)

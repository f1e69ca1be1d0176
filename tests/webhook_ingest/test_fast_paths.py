"""The hot path's shortcuts give exactly what the straightforward code gives."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fin_relay.contract.fin_api import parse_fin_time
from fin_relay.webhook_ingest import events
from fin_relay.webhook_ingest.accesslog import _MAX_CACHED, AccessLog
from fin_relay.webhook_ingest.app import _start_message
from fin_relay.webhook_ingest.events import event_bytes, event_json, fin_time_ms, parse_body
from fin_relay.webhook_ingest.message import EventMessageBuilder
from fin_relay.webhook_ingest.verify import Verifier, sign, verify_signature

BODY = b'{"event_name":"fin_status_updated","conversation_id":"c1"}'


def test_verifier_agrees_with_verify_signature() -> None:
    old, new = b"old-secret", "nouveau-s\u00e9cret".encode()
    verifier = Verifier([old, new])
    headers: list[Any] = [
        sign(BODY, old),
        sign(BODY, new),
        sign(BODY, b"other"),
        sign(BODY, old).upper(),
        sign(BODY + b" ", old),
        None,
        "",
        "sha256=zz",
        sign(BODY, old).encode(),
    ]
    for header in headers:
        assert verifier(BODY, header) == verify_signature(BODY, header, [old, new]), header
    assert verifier(BODY, sign(BODY, new)) and not verifier(BODY, sign(BODY, b"other"))
    # the keyed states are copied, never consumed: repeated calls keep working
    assert all(verifier(BODY, sign(BODY, old)) for _ in range(3))


@given(st.lists(st.one_of(st.none(), st.text(max_size=12), st.integers(), st.booleans())))
def test_compact_list_matches_the_json_encoder(fields: list[Any]) -> None:
    assert events._compact_list(fields) == events._COMPACT.encode(fields)


@given(
    st.datetimes(min_value=__import__("datetime").datetime(1, 1, 2)),
    st.integers(min_value=0, max_value=999),
)
def test_fin_time_ms_matches_parse_fin_time(moment: Any, millis: int) -> None:
    value = moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"
    value = value.rjust(24, "0")  # strftime does not pad years below 1000 everywhere
    expected = int(parse_fin_time(value).timestamp() * 1000)
    assert fin_time_ms(value) == expected
    assert fin_time_ms(value) == expected  # second call: from the cache


@pytest.mark.parametrize(
    "value",
    ["2026-13-01T00:00:00.000Z", "2026-01-01T24:00:00.000Z", "2026-01-01T00:00:00.0a0Z", "x" * 24],
)
def test_fin_time_ms_refuses_what_parse_fin_time_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        parse_fin_time(value)
    with pytest.raises(ValueError):
        fin_time_ms(value)


def test_fin_time_ms_other_forms_take_the_slow_path() -> None:
    for value in [
        "2026-01-01T10:00:00Z",
        "2026-01-01T10:00:00.5+02:00",
        "2026-01-01T10:00:00.123456Z",
    ]:
        assert fin_time_ms(value) == int(parse_fin_time(value).timestamp() * 1000)


@pytest.mark.parametrize(
    "raw",
    [
        BODY,
        b'{"event_name":"x","s":"back\\\\slash \\"q\\""}',
        b'{"event_name":"x","s":"\\u00fc \xc3\xbc"}',
    ],
)
def test_event_bytes_is_event_json_encoded(raw: bytes) -> None:
    event = parse_body(raw)
    assert event_bytes(event) == event_json(event).encode()
    if b"\\u" not in raw:
        assert event_bytes(event) is event.raw  # the received bytes, not a copy


def test_event_bytes_refuses_lone_surrogates() -> None:
    with pytest.raises(UnicodeEncodeError):
        event_bytes(parse_body(b'{"event_name":"x","s":"\\ud800"}'))


def test_build_bytes_is_build_encoded() -> None:
    builder = EventMessageBuilder()
    event = parse_body(b'{"event_name":"x","s":"50% %(tid)s @@fin-relay-tag@@"}')
    text = builder.build(event_json(event), "evt_\u00fc", 7)
    raw = builder.build_bytes(event_bytes(event), "evt_\u00fc", 7)
    as_text = json.loads(text)
    as_raw = json.loads(raw)
    assert as_raw["body"] == as_text["body"] and as_raw["headers"] == as_text["headers"]
    tags = {as_text["properties"].pop("delivery_tag"), as_raw["properties"].pop("delivery_tag")}
    assert len(tags) == 2 and as_raw["properties"] == as_text["properties"]


def test_response_start_messages_are_cached_and_bounded() -> None:
    first = _start_message(202, 21, ())
    assert first is _start_message(202, 21, ())
    assert first["headers"][-1] == (b"content-length", b"21")
    extra = _start_message(503, 25, ((b"retry-after", b"5"),))
    assert extra["headers"][-1] == (b"retry-after", b"5") and extra["status"] == 503
    for n in range(1000):  # odd lengths never grow the cache without bound
        _start_message(200, 10_000 + n, ())
    from fin_relay.webhook_ingest import app

    assert len(app._STARTS) <= 256


def test_access_log_encoding_cache_is_bounded_and_escapes() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, json_lines=True)
    for i in range(_MAX_CACHED * 3):
        log.record(
            method="POST",
            path="/webhooks/fin",
            status=202,
            started_s=0.0,
            event_name=f"e{i}\n",
            conversation_id="c",
            dedup="new",
        )
    log.flush()
    assert len(log._encoded) <= _MAX_CACHED
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == _MAX_CACHED * 3 and lines[-1]["event_name"] == f"e{_MAX_CACHED * 3 - 1}\n"

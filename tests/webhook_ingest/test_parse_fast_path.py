"""parse_body's fast path (msgspec, head fields only) decides exactly as the reference (json).

Each body is parsed twice: as the ingest does, and with the fast decoder switched off so that
every body goes through the standard library's ``json`` (what the ingest did before). Every
decision taken from the result must be the same: the refusal and its code, the event name and
conversation id, the replay timestamp, the de-dup key, and the bytes put in the Celery message.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any
from unittest import mock

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fin_relay.webhook_ingest import events
from fin_relay.webhook_ingest.events import Rejected, created_at_ms, dedup_key, event_bytes

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["2025-01-24T10:00:00.123Z", "2025-01-24T10:00:00Z", "m1", ""])
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
_ABSENT = object()
head_names = st.sampled_from(
    sorted(events.HEAD_FIELDS - {"event_name", "message"}) + ["id", "timestamp_ms", "other"]
)
messages = st.dictionaries(st.sampled_from(["id", "timestamp_ms", "content"]), values, max_size=3)
names = st.sampled_from(["fin_replied", "fin_status_updated", "fin_reply_chunk", "x_new", ""])


def _body(fields: dict[str, Any], name: Any, message: Any) -> dict[str, Any]:
    body = dict(fields)
    if name is not _ABSENT:
        body["event_name"] = name
    if message is not _ABSENT:
        body["message"] = message
    return body


bodies = st.builds(
    _body,
    st.dictionaries(head_names, values, max_size=5),
    st.just(_ABSENT) | names | values,
    st.just(_ABSENT) | messages | values,
)


_KNOWN = b'{"event_name":"fin_status_updated","created_at_ms":"2025-01-24T10:00:00.123Z"'


class _Off:
    """A decoder that refuses everything: parse_body then takes its reference path."""

    @staticmethod
    def decode(raw: bytes) -> Any:
        raise msgspec.DecodeError("fast path off")


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return ("ok", fn())
    except Rejected as exc:
        return ("rejected", exc.status, exc.code)
    except UnicodeEncodeError:
        return ("unicode",)


def decisions(raw: bytes) -> Any:
    try:
        event = events.parse_body(raw)
    except Rejected as exc:
        return ("rejected", exc.status, exc.code)
    return (
        event.name,
        event.conversation_id,
        _outcome(lambda: created_at_ms(event)),
        _outcome(lambda: dedup_key(event)),
        _outcome(lambda: event_bytes(event)),
    )


def reference(raw: bytes) -> Any:
    with mock.patch.object(events, "_HEAD_DECODER", _Off):
        return decisions(raw)


def _encodings(body: dict[str, Any]) -> list[bytes]:
    return [
        json.dumps(body).encode(),  # ASCII with \\u escapes
        json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"),
        json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace"),
    ]


@settings(max_examples=400, deadline=None)
@given(body=bodies)
def test_fast_path_decides_as_the_reference(body: dict[str, Any]) -> None:
    for raw in _encodings(body):
        assert decisions(raw) == reference(raw), raw


@settings(max_examples=300, deadline=None)
@given(body=bodies, seed=st.integers(0, 2**32 - 1))
def test_fast_path_decides_as_the_reference_on_damaged_bodies(
    body: dict[str, Any], seed: int
) -> None:
    """Bytes cut, dropped, doubled or replaced: the same refusals (or acceptances)."""
    rng = random.Random(seed)
    raw = bytearray(json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    for _ in range(rng.randint(1, 3)):
        if not raw:
            break
        at = rng.randrange(len(raw))
        choice = rng.randrange(4)
        if choice == 0:
            del raw[at:]
        elif choice == 1:
            del raw[at]
        elif choice == 2:
            raw.insert(at, raw[at])
        else:
            raw[at] = rng.choice(b'{}[]",:\\ 0123456789eE.-+tfnu\x00\xff\xc3')
    assert decisions(bytes(raw)) == reference(bytes(raw)), bytes(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_name":"fin_replied","message":{"id":"\\ud800"}}',  # lone surrogate
        b'{"event_name":"x","conversation_id":"c\\udc00"}',
        b'{"event_name":"fin_status_updated","status":1e400}',  # out of float range
        b'{"event_name":"fin_replied","message":null,"created_at_ms":"2025-01-24T10:00:00.1Z"}',
        b'{"event_name":"fin_reply_chunk","chunk_index":123456789012345678901234567890}',
        b'{"event_name":"a","event_name":"fin_replied","message":{"id":1,"id":"m2"}}',
        b'{"event_name":"x_new","z":1,"a":[1,{"b":"\\u00e9"}]}',  # whole-body digest
        b'{"event_name":"x_new","deep":' + b"[" * 2000 + b"]" * 2000 + b"}",
        _KNOWN + b',"deep":' + b"[" * 993 + b"]" * 993 + b"}",  # near the recursion limit
        _KNOWN + b',"deep":' + b"[" * 511 + b"]" * 511 + b"}",  # 512 levels: the limit
        _KNOWN + b',"deep":' + b"[" * 512 + b"]" * 512 + b"}",
        _KNOWN + b',"brackets":"' + b"[" * 600 + b'"}',  # many brackets, none nesting
        _KNOWN + b',"n":' + b"1" * 4301 + b"}",  # json refuses ints of more than 4,300 digits
        _KNOWN + b',"n":' + b"1" * 4000 + b"}",
        b'{"event_name":"fin_replied"} trailing',
        b"[1] x",
        b'\xef\xbb\xbf{"event_name":"x"}',
        b'{"event_name":NaN}',
    ],
)
def test_edge_cases_decide_as_the_reference(raw: bytes) -> None:
    assert decisions(raw) == reference(raw)


def test_fast_path_is_taken_and_keeps_only_head_fields() -> None:
    event = events.parse_body(
        b'{"event_name":"fin_replied","conversation_id":"c","pad":"x",'
        b'"message":{"id":"m1","content":"hello","timestamp_ms":5}}'
    )
    assert not event.whole
    assert event.fields == {
        "event_name": "fin_replied",
        "conversation_id": "c",
        "message": {"id": "m1", "timestamp_ms": 5},
    }
    assert event.body["pad"] == "x" and event.body["message"]["content"] == "hello"


def test_limits_are_explicit() -> None:
    """Nesting beyond MAX_DEPTH and integers the standard library refuses are 400 on every path
    (so the worker's ``json`` never meets a body it cannot decode)."""
    depth = events.MAX_DEPTH
    ok = _KNOWN + b',"deep":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    deep = _KNOWN + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    assert events.parse_body(ok).name == "fin_status_updated"
    assert json.loads(events.event_bytes(events.parse_body(ok)))["event_name"]
    for raw in (deep, _KNOWN + b',"n":' + b"1" * 4301 + b"}"):
        with pytest.raises(Rejected) as info:
            events.parse_body(raw)
        assert (info.value.status, info.value.code) == (400, "invalid_json")

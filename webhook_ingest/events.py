"""What the ingest decides from a verified body, as pure functions: parse, classify, de-dup key.

Every refusal is a :class:`Rejected` carrying the HTTP status and a short machine code, so the
ASGI layer only maps it to a response. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, TypedDict, cast

import msgspec

from fin_relay.contract.fin_api import parse_fin_time

#: ``message.id`` values longer than this are hashed into the key rather than used verbatim.
_MAX_ID_CHARS = 200


class Rejected(Exception):
    """The request gets ``status`` with the JSON body ``{"error": code}``; nothing is enqueued."""

    def __init__(self, status: int, code: str, detail: str = "") -> None:
        super().__init__(f"{status} {code}{': ' + detail if detail else ''}")
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(slots=True)  # not frozen: a frozen __init__ costs measurably more per request
class Event:
    """A verified, parsed event ready to enqueue (or a test ping when ``name`` is ``None``)."""

    fields: dict[str, Any]
    """The top-level fields the ingest decides on (see :data:`HEAD_FIELDS`; ``message`` holds
    only its ``id`` and ``timestamp_ms``), or the whole body when ``whole``."""
    name: str | None
    conversation_id: str | None
    raw: bytes = b""
    """The body bytes as received (valid UTF-8 JSON), spliced into the Celery message as is."""
    whole: bool = False

    @property
    def body(self) -> dict[str, Any]:
        """The whole body as a dict (parsed again unless ``whole``: only rare paths need it).

        Cannot fail for a body :func:`parse_body` accepted: both of its paths accept the same
        documents (a differential test holds them to it)."""
        if self.whole:
            return self.fields
        body = _decode_reference(self.raw)
        if not isinstance(body, dict):  # pragma: no cover - the fast decoder saw an object
            raise Rejected(400, "not_an_object")
        return body


class _MessageHead(TypedDict, total=False):
    id: Any
    timestamp_ms: Any


class _Head(TypedDict, total=False):
    """What the ingest reads of an event: de-dup key fields, replay check, log fields."""

    event_name: Any
    conversation_id: Any
    status: Any
    created_at_ms: Any
    stream_id: Any
    chunk_index: Any
    message: _MessageHead


#: The top-level fields :func:`parse_body` extracts on its fast path.
HEAD_FIELDS = frozenset(_Head.__annotations__)

_HEAD_DECODER = msgspec.json.Decoder(_Head)


def _reject_constant(value: str) -> Any:
    raise ValueError(f"non-standard JSON constant {value}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


#: Deepest nesting accepted (400 ``invalid_json`` beyond). Explicit and far below Python's
#: recursion limit, so that every consumer's ``json`` (the worker's, deeper in its own stack)
#: decodes whatever the ingest accepted.
MAX_DEPTH = 512
#: Bodies up to this size with at most :data:`MAX_DEPTH` opening brackets take the fast path:
#: such a body cannot nest too deep, nor hold an integer the standard library refuses to
#: convert (more than 4,300 digits), which the fast decoder skips without converting.
_FAST_MAX_BYTES = 4096


def _decode_reference(raw: bytes) -> Any:
    """The reference decoding (the standard library's ``json``) with the :data:`MAX_DEPTH`
    limit; :class:`Rejected` (400 ``invalid_json``)."""
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise Rejected(400, "invalid_json", type(exc).__name__) from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise Rejected(400, "invalid_json", f"nested deeper than {MAX_DEPTH}")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether lists/dicts nest more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if type(item) is dict else item if type(item) is list else ()
        for child in children:
            if type(child) is dict or type(child) is list:
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_body(raw: bytes) -> Event:
    """Parse a *verified* body: a JSON object; ``event_name`` absent means the settings test ping.

    Raises :class:`Rejected` (400) for a body that is not UTF-8, invalid JSON, NaN/Infinity,
    nested deeper than :data:`MAX_DEPTH`, a non-object, or an ``event_name`` that is not a
    non-empty string.

    Fast path, for bodies up to 4 KiB with at most :data:`MAX_DEPTH` brackets (the usual
    event): a compiled decoder (msgspec) validates the whole document and keeps only the
    :data:`HEAD_FIELDS`, about 6x cheaper than building the whole dict. Whatever it refuses
    (invalid JSON, but also what the standard library accepts and it does not: lone surrogate
    escapes, numbers out of float range, a ``message`` that is not an object), and every other
    body, is decided by the reference decoder, so the answers are the standard library's.
    UTF-8 is checked first: the fast decoder does not look inside the strings it skips.
    """
    fields: dict[str, Any] | None = None
    if len(raw) <= _FAST_MAX_BYTES and raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        try:
            if not raw.isascii():
                raw.decode("utf-8")
            fields = cast(dict[str, Any], _HEAD_DECODER.decode(raw))  # a TypedDict is a dict
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            pass
    whole = fields is None
    if fields is None:
        body = _decode_reference(raw)
        if not isinstance(body, dict):
            raise Rejected(400, "not_an_object")
        fields = body
    conversation_id = fields.get("conversation_id")
    if type(conversation_id) is not str:
        conversation_id = None
    if "event_name" not in fields:
        return Event(fields, None, conversation_id, raw, whole)
    name = fields["event_name"]
    if not isinstance(name, str) or not name:
        raise Rejected(400, "invalid_event_name")
    return Event(fields, name, conversation_id, raw, whole)


def event_json(event: Event) -> str:
    """JSON text of the event for the Celery message: the received text when it can be reused
    verbatim, else a re-encoding (bodies with ``\\u`` escapes, which may hide lone surrogates:
    those then fail to encode and are refused)."""
    text = event.raw.decode("utf-8")
    if "\\u" not in text:
        return text
    return _COMPACT.encode(event.body)


def event_bytes(event: Event) -> bytes:
    """:func:`event_json` as UTF-8 bytes: the received bytes themselves when they hold no
    backslash at all (a ``memchr``) or no ``\\u`` escape; raises ``UnicodeEncodeError`` for
    lone surrogates."""
    raw = event.raw
    if b"\\" not in raw or b"\\u" not in raw:
        return raw
    return _COMPACT.encode(event.body).encode()


def created_at_ms(event: Event) -> int | None:
    """``created_at_ms`` as epoch milliseconds (Fin sends ISO-8601 despite the name), or ``None``
    when it is missing or not a valid timestamp (on any event, known or not): such an event is
    still accepted, it only cannot be checked for replay (:func:`check_replay`)."""
    value = event.fields.get("created_at_ms")
    if isinstance(value, str):
        try:
            return fin_time_ms(value)
        except (ValueError, OverflowError):
            pass
    return None


_SECONDS_CACHE: dict[str, int] = {}
_MAX_CACHED_SECONDS = 1024


def fin_time_ms(value: str) -> int:
    """``int(parse_fin_time(value).timestamp() * 1000)``, the same result for every input.

    Fin's usual form ``YYYY-MM-DDTHH:MM:SS.mmmZ`` takes a fast path: the whole seconds are
    parsed once per distinct second (events arriving together share it; the cache is bounded)
    and the milliseconds added with the same float arithmetic as ``timestamp()``. Raises
    ``ValueError`` (or ``OverflowError``) for an invalid timestamp, as ``parse_fin_time`` does.
    """
    if len(value) == 24 and value[19] == "." and value[23] == "Z" and value.isascii():
        millis = value[20:23]
        if millis.isdigit():
            prefix = value[:19]
            seconds = _SECONDS_CACHE.get(prefix)
            if seconds is None:
                seconds = int(parse_fin_time(prefix + "Z").timestamp())  # whole: exact
                if len(_SECONDS_CACHE) >= _MAX_CACHED_SECONDS:
                    _SECONDS_CACHE.clear()
                _SECONDS_CACHE[prefix] = seconds
            # timestamp() is (whole seconds * 10**6 + microseconds) / 10**6, a float
            return int((seconds * 1_000_000 + int(millis) * 1000) / 1_000_000 * 1000)
    return int(parse_fin_time(value).timestamp() * 1000)


def check_replay(event: Event, *, now_ms: int, ttl_s: int) -> None:
    """Refuse (400 ``event_too_old``) an event older than the de-dup TTL.

    The signature carries no timestamp, so a captured request could be replayed once its de-dup
    mark expired; an event is only accepted while its mark would still exist. An event without a
    valid ``created_at_ms`` cannot be checked and passes (it is still de-duplicated for the TTL).
    """
    at_ms = created_at_ms(event)
    if at_ms is not None and now_ms - at_ms > ttl_s * 1000:
        raise Rejected(400, "event_too_old")


def dedup_key(event: Event) -> str:
    """The de-dup key, stable across redeliveries that are not byte-identical.

    ``msg_<message.id>`` for ``fin_replied`` with a message id (also how SSE de-duplicates);
    otherwise ``evt_`` + SHA-256 (first 32 hex) over the JSON list of the event's own fields:
    ``event_name``, ``conversation_id``, ``status``, ``created_at_ms``, plus ``stream_id`` and
    ``chunk_index`` for ``fin_reply_chunk``, and ``stream_id`` and ``message.timestamp_ms`` for a
    ``fin_replied`` without id. An event without ``created_at_ms`` (missing, ``null`` or not a
    string: known or unknown) hashes its whole body (keys sorted) instead, so that two different
    events of one conversation without a time never share a key. The key is also the Celery
    ``event_id`` and the published envelope id.
    """
    body = event.fields
    message = body.get("message")
    if event.name == "fin_replied" and isinstance(message, dict):
        mid = message.get("id")
        if isinstance(mid, str | int) and not isinstance(mid, bool) and str(mid):
            text = str(mid)
            if len(text) <= _MAX_ID_CHARS and text.isprintable():
                return f"msg_{text}"
            return "msg_" + hashlib.sha256(text.encode()).hexdigest()[:32]
    created = body.get("created_at_ms")
    if type(created) is not str or not created:
        return "evt_" + _digest(event.body, sort_keys=True)
    fields: list[Any] = [
        event.name,
        body.get("conversation_id"),
        body.get("status"),
        body.get("created_at_ms"),
    ]
    if event.name == "fin_reply_chunk":
        fields += [body.get("stream_id"), body.get("chunk_index")]
    elif event.name == "fin_replied":
        timestamp = message.get("timestamp_ms") if isinstance(message, dict) else None
        fields += [body.get("stream_id"), timestamp]
    return "evt_" + _digest(fields)


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_COMPACT_SORTED = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True)


_ENCODE_STR: Any = json.encoder.encode_basestring  # what _COMPACT uses for a str (C)


def _compact_list(fields: list[Any]) -> str:
    """``_COMPACT.encode(fields)``; lists of strings, ints and ``None`` (the usual key fields) are
    joined directly, skipping the encoder's per-call set-up."""
    parts = []
    for field in fields:
        if type(field) is str:
            parts.append(_ENCODE_STR(field))
        elif field is None:
            parts.append("null")
        elif type(field) is int:  # fin_reply_chunk's chunk_index, fin_replied's timestamp_ms
            parts.append(int.__repr__(field))
        else:
            return _COMPACT.encode(fields)
    return "[" + ",".join(parts) + "]"


def _digest(value: Any, *, sort_keys: bool = False) -> str:
    if type(value) is list and not sort_keys:
        text = _compact_list(value)
    else:
        text = (_COMPACT_SORTED if sort_keys else _COMPACT).encode(value)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]

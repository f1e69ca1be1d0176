"""What the ingest decides from a verified body, as pure functions: parse, classify, de-dup key.

Every refusal is a :class:`Rejected` carrying the HTTP status and a short machine code, so the
ASGI layer only maps it to a response. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from fin_relay.contract.fin_api import KNOWN_EVENTS, parse_fin_time

#: ``message.id`` values longer than this are hashed into the key rather than used verbatim.
_MAX_ID_CHARS = 200


class Rejected(Exception):
    """The request gets ``status`` with the JSON body ``{"error": code}``; nothing is enqueued."""

    def __init__(self, status: int, code: str, detail: str = "") -> None:
        super().__init__(f"{status} {code}{': ' + detail if detail else ''}")
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Event:
    """A verified, parsed event ready to enqueue (or a test ping when ``name`` is ``None``)."""

    body: dict[str, Any]
    name: str | None
    conversation_id: str | None
    text: str = ""
    """The body as received (UTF-8 decoded JSON text), spliced into the Celery message as is."""


def _reject_constant(value: str) -> Any:
    raise ValueError(f"non-standard JSON constant {value}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_body(raw: bytes) -> Event:
    """Parse a *verified* body: a JSON object; ``event_name`` absent means the settings test ping.

    Raises :class:`Rejected` (400) for a body that is not UTF-8, invalid JSON, NaN/Infinity,
    nesting too deep, a non-object, or an ``event_name`` that is not a non-empty string.
    """
    try:
        text = raw.decode("utf-8")
        body = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise Rejected(400, "invalid_json", type(exc).__name__) from None
    if not isinstance(body, dict):
        raise Rejected(400, "not_an_object")
    if "event_name" not in body:
        return Event(body, None, _str_or_none(body.get("conversation_id")), text)
    name = body["event_name"]
    if not isinstance(name, str) or not name:
        raise Rejected(400, "invalid_event_name")
    return Event(body, name, _str_or_none(body.get("conversation_id")), text)


def event_json(event: Event) -> str:
    """JSON text of the event for the Celery message: the received text when it can be reused
    verbatim, else a re-encoding (bodies with ``\\u`` escapes, which may hide lone surrogates:
    those then fail to encode and are refused)."""
    if "\\u" not in event.text:
        return event.text
    return _COMPACT.encode(event.body)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def created_at_ms(event: Event) -> int | None:
    """``created_at_ms`` as epoch milliseconds (Fin sends ISO-8601 despite the name).

    ``None`` when an unknown event has none; :class:`Rejected` (400) when it is missing on a
    known event or is not a valid timestamp.
    """
    value = event.body.get("created_at_ms")
    if value is None and event.name not in KNOWN_EVENTS:
        return None
    if isinstance(value, str):
        try:
            return int(parse_fin_time(value).timestamp() * 1000)
        except (ValueError, OverflowError):
            pass
    raise Rejected(400, "invalid_created_at_ms")


def check_replay(event: Event, *, now_ms: int, ttl_s: int) -> None:
    """Refuse (400 ``event_too_old``) an event older than the de-dup TTL.

    The signature carries no timestamp, so a captured request could be replayed once its de-dup
    mark expired; an event is only accepted while its mark would still exist.
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
    ``fin_replied`` without id. An unknown event without ``created_at_ms`` hashes its whole body
    (keys sorted). The key is also the Celery ``event_id`` and the published envelope id.
    """
    body = event.body
    message = body.get("message")
    if event.name == "fin_replied" and isinstance(message, dict):
        mid = message.get("id")
        if isinstance(mid, str | int) and not isinstance(mid, bool) and str(mid):
            text = str(mid)
            if len(text) <= _MAX_ID_CHARS and text.isprintable():
                return f"msg_{text}"
            return "msg_" + hashlib.sha256(text.encode()).hexdigest()[:32]
    if body.get("created_at_ms") is None and event.name not in KNOWN_EVENTS:
        return "evt_" + _digest(body, sort_keys=True)
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


def _digest(value: Any, *, sort_keys: bool = False) -> str:
    text = (_COMPACT_SORTED if sort_keys else _COMPACT).encode(value)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]

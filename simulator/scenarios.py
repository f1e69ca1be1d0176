"""Scripted outcomes: which events a turn produces, chosen by the user's message text.

Keywords are matched case-insensitively as substrings (see docs/simulator.md):

* escalation: ``human``, ``agent``, ``person``, ``representative``, ``operator``
  → ``fin_replied`` + ``escalated`` (reason "Escalation requested by user") + ``complete``;
* resolution: ``thank``, ``solved``, ``that worked``, ``that helped``
  → ``resolved`` + ``complete`` + ``csat_requested``;
* anything else: a normal turn → ``fin_replied`` × ``reply_parts`` + ``awaiting_user_reply``.

Version rules: ``fin_replied.status`` is ``awaiting_user_reply`` in 2.14/2.15 and ``replying`` from
2.16 (and Preview); a ``/fin/ask`` answer ends with ``complete`` (its ``fin_replied`` would be
``complete`` in 2.17, whose schema has no ``/fin/ask`` yet). Every event validates against its
version's event schema (``fin_relay.simulator.spec.event_errors``) except the entries of
``spec.DOCUMENTED_DEVIATIONS`` (2.14/2.15 ``awaiting_user_reply`` status events).

:data:`ON_DEMAND` lists the events the control API sends on request (unknown status / event,
2.17 ``thinking`` and ``complete`` replies, a ``fin_reply_chunk``, unknown extra fields).
"""

from __future__ import annotations

import html
import itertools
import secrets
from collections.abc import Callable
from typing import Any, Literal

from fin_relay.contract.fin_api import version_at_least
from fin_relay.simulator.state import Conversation

Outcome = Literal["answer", "escalate", "resolve"]

ESCALATE_WORDS: tuple[str, ...] = ("human", "agent", "person", "representative", "operator")
RESOLVE_WORDS: tuple[str, ...] = ("thank", "solved", "that worked", "that helped")

USER_ESCALATION_REASON = "Escalation requested by user"
API_ESCALATION_REASON = "Escalation requested via API"

CSAT_OPTIONS: list[dict[str, str]] = [
    {"key": "terrible", "emoji": "😠", "label": "Terrible"},
    {"key": "bad", "emoji": "🙁", "label": "Bad"},
    {"key": "ok", "emoji": "😐", "label": "OK"},
    {"key": "good", "emoji": "😃", "label": "Great"},
    {"key": "amazing", "emoji": "🤩", "label": "Amazing"},
]

_PREFIX = secrets.token_hex(4)
_IDS = itertools.count(1)


def new_message_id() -> str:
    """A ``message.id`` unique within this process and very likely across restarts."""
    return f"{_PREFIX}{next(_IDS):010d}"


def classify(text: str) -> Outcome:
    """The scripted outcome for a user's message."""
    lowered = text.lower()
    if any(word in lowered for word in ESCALATE_WORDS):
        return "escalate"
    if any(word in lowered for word in RESOLVE_WORDS):
        return "resolve"
    return "answer"


def reply_status(version: str, kind: str) -> str:
    """``fin_replied.status`` for ``version`` (``kind`` = conversation | ask | procedure)."""
    if kind == "ask" and version == "2.17":
        return "complete"
    return "replying" if version_at_least(version, "2.16") else "awaiting_user_reply"


def _replied(conv: Conversation, body: str, status: str) -> dict[str, Any]:
    created = conv.next_created_at()
    return {
        "event_name": "fin_replied",
        "conversation_id": conv.id,
        "user_id": conv.user_id,
        "message": {
            "id": new_message_id(),
            "author": "fin",
            "body": body,
            "timestamp_ms": created,
        },
        "status": status,
        "created_at_ms": created,
    }


def status_event(conv: Conversation, status: str, reason: str | None = None) -> dict[str, Any]:
    """A ``fin_status_updated`` event (``reason`` only with ``escalated``)."""
    event: dict[str, Any] = {
        "event_name": "fin_status_updated",
        "conversation_id": conv.id,
        "user_id": conv.user_id,
        "status": status,
    }
    if reason is not None:
        event["reason"] = reason
    event["created_at_ms"] = conv.next_created_at()
    return event


def csat_event(conv: Conversation) -> dict[str, Any]:
    """A ``csat_requested`` event with all five options."""
    return {
        "event_name": "csat_requested",
        "conversation_id": conv.id,
        "user_id": conv.user_id,
        "csat": {"options": CSAT_OPTIONS},
        "created_at_ms": conv.next_created_at(),
    }


def turn_events(conv: Conversation, text: str, parts: int) -> tuple[list[dict[str, Any]], str]:
    """The events of one turn and the conversation's status afterwards."""
    quoted = html.escape(text[:80])
    status = reply_status(conv.version, conv.kind)
    if conv.kind == "ask":
        events = [_replied(conv, f"<p>Simulated answer to: {quoted}</p>", status)]
        events.append(status_event(conv, "complete"))
        return events, "complete"
    outcome = classify(text)
    if outcome == "escalate":
        events = [
            _replied(conv, "<p>I'll connect you with a member of our team.</p>", status),
            status_event(conv, "escalated", USER_ESCALATION_REASON),
            status_event(conv, "complete"),
        ]
        return events, "complete"
    if outcome == "resolve":
        events = [status_event(conv, "resolved"), status_event(conv, "complete"), csat_event(conv)]
        return events, "complete"
    events = []
    for index in range(parts):
        part = f" (part {index + 1} of {parts})" if parts > 1 else ""
        events.append(_replied(conv, f"<p>Simulated answer to: {quoted}{part}</p>", status))
    events.append(status_event(conv, "awaiting_user_reply"))
    return events, "awaiting_user_reply"


def escalation_events(conv: Conversation) -> list[dict[str, Any]]:
    """``/fin/escalate`` on a conversation: ``escalated`` (API reason) then ``complete``."""
    return [status_event(conv, "escalated", API_ESCALATION_REASON), status_event(conv, "complete")]


# --- events on demand (``POST /_sim/conversations/{id}/events``) -----------------------------

#: A status no version documents (receivers must not reject unknown values).
UNKNOWN_STATUS = "pondering"
#: An event name no version documents.
UNKNOWN_EVENT = "fin_mood_changed"


def _unknown_status(conv: Conversation) -> list[dict[str, Any]]:
    return [status_event(conv, UNKNOWN_STATUS)]


def _unknown_event(conv: Conversation) -> list[dict[str, Any]]:
    return [
        {
            "event_name": UNKNOWN_EVENT,
            "conversation_id": conv.id,
            "user_id": conv.user_id,
            "mood": "curious",
            "created_at_ms": conv.next_created_at(),
        }
    ]


def _thinking(conv: Conversation) -> list[dict[str, Any]]:
    return [status_event(conv, "thinking")]


def _complete_reply(conv: Conversation) -> list[dict[str, Any]]:
    event = _replied(conv, "<p>Here is the complete answer.</p>", "complete")
    event["message"]["format"] = "html"
    event["message"]["sources"] = [
        {"type": "article", "title": "Account settings", "url": "https://example.com/help/1"}
    ]
    return [event]


def _reply_chunk(conv: Conversation) -> list[dict[str, Any]]:
    return [
        {
            "event_name": "fin_reply_chunk",
            "conversation_id": conv.id,
            "stream_id": secrets.token_hex(16),
            "chunk_index": 0,
            "chunk_text": "You can see your account details by clicking",
            "status": "replying",
            "created_at_ms": conv.next_created_at(),
        }
    ]


def _extra_fields(conv: Conversation) -> list[dict[str, Any]]:
    event = _replied(
        conv,
        "<p>An answer with fields no version documents.</p>",
        reply_status(conv.version, conv.kind),
    )
    event["message"]["x_undocumented"] = {"confidence": 0.9}
    event["x_undocumented"] = "added by Fin without notice"
    return [event]


#: ``kind`` -> the events it sends (all with ``created_at_ms`` now, in this conversation's
#: strictly increasing order).
ON_DEMAND: dict[str, Callable[[Conversation], list[dict[str, Any]]]] = {
    "unknown_status": _unknown_status,
    "unknown_event": _unknown_event,
    "thinking": _thinking,
    "complete_reply": _complete_reply,
    "reply_chunk": _reply_chunk,
    "extra_fields": _extra_fields,
}


def on_demand_events(conv: Conversation, kind: str) -> list[dict[str, Any]]:
    """The events of an on-demand ``kind``; ``ValueError`` for an unknown kind."""
    make = ON_DEMAND.get(kind)
    if make is None:
        raise ValueError(f"unknown event kind {kind!r} (one of {', '.join(ON_DEMAND)})")
    return make(conv)

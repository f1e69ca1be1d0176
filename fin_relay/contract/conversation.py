"""Per-conversation state in Redis: what Fin last said, whether a turn is in progress.

Hash ``{ns}:conv:{id}:state`` with string fields:

* ``status``: the last Fin status seen (from a call response or an event).
* ``turn_in_progress``: ``"1"`` from the moment a start/reply/ask/procedure call succeeds until
  Fin reports ``awaiting_user_reply`` or ``complete`` (the "done" signals), else ``"0"``.
* ``escalated``: ``"1"`` once Fin reported ``escalated`` (later replies go to the human).
* ``resolved``: ``"1"`` once Fin reported ``resolved``.
* ``updated_at_ms``: epoch ms of the last change; ``last_event_at``: Fin's ``created_at_ms``.
* ``turn_started_at_ms``: epoch ms when the current turn started.

Written by the worker (after calls, and by the ``fin.event`` task); read by sequencing,
``fin-relay conversation show`` and the producer API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fin_relay.contract.redisproto import text

DONE_STATUSES = frozenset({"awaiting_user_reply", "complete"})
STATE_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class ConversationState:
    conversation_id: str
    status: str | None
    turn_in_progress: bool
    escalated: bool
    resolved: bool
    updated_at_ms: int | None
    turn_started_at_ms: int | None
    last_event_at: str | None

    @classmethod
    def from_hash(cls, conversation_id: str, raw: dict[Any, Any]) -> ConversationState:
        data = {text(k): text(v) for k, v in raw.items()}

        def _int(key: str) -> int | None:
            value = data.get(key)
            return int(value) if value not in (None, "") else None

        return cls(
            conversation_id=conversation_id,
            status=data.get("status") or None,
            turn_in_progress=data.get("turn_in_progress") == "1",
            escalated=data.get("escalated") == "1",
            resolved=data.get("resolved") == "1",
            updated_at_ms=_int("updated_at_ms"),
            turn_started_at_ms=_int("turn_started_at_ms"),
            last_event_at=data.get("last_event_at") or None,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "status": self.status,
            "turn_in_progress": self.turn_in_progress,
            "escalated": self.escalated,
            "resolved": self.resolved,
            "updated_at_ms": self.updated_at_ms,
            "turn_started_at_ms": self.turn_started_at_ms,
            "last_event_at": self.last_event_at,
        }


def event_state_update(status: str, now_ms: int, created_at_ms: str | None) -> dict[str, str]:
    """Hash fields to set when Fin reports ``status`` in an event."""
    fields = {"status": status, "updated_at_ms": str(now_ms)}
    if created_at_ms:
        fields["last_event_at"] = created_at_ms
    if status in DONE_STATUSES:
        fields["turn_in_progress"] = "0"
    if status == "escalated":
        fields["escalated"] = "1"
    if status == "resolved":
        fields["resolved"] = "1"
    return fields


def call_state_update(status: str, now_ms: int) -> dict[str, str]:
    """Hash fields to set after a start/reply/ask call succeeded with response ``status``."""
    fields = {"status": status, "updated_at_ms": str(now_ms)}
    if status in DONE_STATUSES or status in ("escalated", "resolved"):
        fields["turn_in_progress"] = "0"
    else:
        fields["turn_in_progress"] = "1"
        fields["turn_started_at_ms"] = str(now_ms)
    if status == "escalated":
        fields["escalated"] = "1"
    return fields


def read_state(client: Any, key: str, conversation_id: str) -> ConversationState:
    """Read one conversation's state (sync redis client)."""
    return ConversationState.from_hash(conversation_id, client.hgetall(key))

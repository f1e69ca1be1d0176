"""Conversation state: one record per external ``conversation_id``, message de-duplication.

Intercom documents that the message ``timestamp`` is "used to deduplicate messages sent within a
5 minute window". The simulator's key is (``conversation_id``, timestamp at ms precision): the body
is not compared (the docs do not say; chosen here).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fin_relay.simulator.spec import parse_date_time

DEDUP_WINDOW_S = 300.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


_SECOND_PREFIX: tuple[int, str] = (-1, "")  # (epoch second, its formatted prefix), swapped whole


def iso_ms(at_ms: int) -> str:
    """``2025-01-24T10:00:00.123Z`` for an epoch-ms value (the second's prefix is cached)."""
    global _SECOND_PREFIX
    second, millis = divmod(at_ms, 1000)
    cached = _SECOND_PREFIX
    if cached[0] != second:
        cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        _SECOND_PREFIX = cached
    return f"{cached[1]}.{millis:03d}Z"


def timestamp_key(value: str | None) -> int | None:
    """Epoch ms of a message timestamp (the de-duplication key), ``None`` if absent."""
    if value is None:
        return None
    moment = parse_date_time(value)  # validated as an RFC 3339 date-time already
    if moment is None:
        return None
    return (moment - _EPOCH) // timedelta(milliseconds=1)


@dataclass
class Conversation:
    """What the simulator knows about one conversation."""

    id: str
    user_id: str
    version: str
    kind: str
    status: str = "thinking"
    #: True between an accepted start/reply and the moment the turn's events are produced.
    busy: bool = False
    last_event_ms: int = 0
    seen: dict[int, float] = field(default_factory=dict)
    pending: asyncio.TimerHandle | None = None
    csat_offered_at: float | None = None
    rating: str | None = None
    remark: str | None = None

    def next_created_at(self) -> str:
        """``created_at_ms`` strictly increasing within this conversation."""
        at = max(now_ms(), self.last_event_ms + 1)
        self.last_event_ms = at
        return iso_ms(at)

    def seen_recently(self, key: int | None) -> bool:
        """True if a message with this timestamp key was accepted within the last 5 minutes."""
        if key is None:
            return False
        first = self.seen.get(key)
        return first is not None and time.monotonic() - first < DEDUP_WINDOW_S

    def remember(self, key: int | None) -> None:
        """Record an accepted message's timestamp key (old keys are pruned)."""
        if key is None:
            return
        now = time.monotonic()
        if len(self.seen) > 64:
            self.seen = {k: t for k, t in self.seen.items() if now - t < DEDUP_WINDOW_S}
        self.seen[key] = now

    def cancel_pending(self) -> None:
        """Forget a scheduled turn (escalation via the API stops Fin)."""
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        self.busy = False


class Store:
    """Every conversation, keyed by external id (in memory; lost on restart)."""

    def __init__(self) -> None:
        self.conversations: dict[str, Conversation] = {}

    def get(self, conversation_id: str) -> Conversation | None:
        """The conversation, or ``None``."""
        return self.conversations.get(conversation_id)

    def create(self, conversation_id: str, user_id: str, version: str, kind: str) -> Conversation:
        """A new conversation (replaces any previous record)."""
        conv = Conversation(conversation_id, user_id, version, kind)
        self.conversations[conversation_id] = conv
        return conv

    def clear(self) -> None:
        """Drop every conversation (``DELETE /_sim/state``)."""
        for conv in self.conversations.values():
            conv.cancel_pending()
        self.conversations.clear()

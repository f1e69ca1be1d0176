"""The ``fin.event`` task's work: publish a Fin webhook event to ``{ns}:events`` and
``{ns}:conversation:{id}``, and update the conversation state when it reports a known status —
one round trip.

Contract with the ingest (fixed): kwargs ``event`` (the raw Fin JSON object), ``event_id``
(stable de-dup key; becomes the envelope id, so a redelivery publishes the same id) and
``received_at_ms``. A marker (``names.job("event:<event_id>")``, 7 days) written in the same
transaction as the publish makes a redelivered event publish nothing new.

Every authentic event is published, whole and as received (``data`` is the event object), under
its own ``event_name``: Fin adds event names, status values and fields between versions, and the
ingest already answered Intercom 2xx, so nothing would resend an event dropped here. Only what
cannot be an event at all is dead-lettered (reason ``invalid_event``): not a JSON object, or no
non-empty string ``event_name`` / ``conversation_id``. The conversation state changes only for
an event that :func:`~fin_relay.contract.fin_api.parse_event` accepts and whose ``status`` is one
fin-relay knows (:data:`KNOWN_STATUSES`); anything else (an unknown name or status, a field of
an unexpected type) is published without touching the state and logged once at INFO, naming
the fields, never their values.
"""

from __future__ import annotations

import logging
import time
from typing import Any, get_args

from pydantic import ValidationError

from fin_relay.contract.conversation import STATE_TTL_S
from fin_relay.contract.envelope import Envelope
from fin_relay.contract.fin_api import (
    KNOWN_EVENTS,
    FinEvent,
    FinRepliedEvent,
    FinStatus,
    FinStatusUpdatedEvent,
    GenericEvent,
    parse_event,
)
from fin_relay.contract.jobs import DEAD_EVENT, dead_letter
from fin_relay.contract.names import TASK_EVENT
from fin_relay.contract.publish import add_publish_once
from fin_relay.worker import metrics
from fin_relay.worker.runtime import Runtime

log = logging.getLogger("fin_relay.worker.events")

#: Every conversation status some API version documents: only these change the state.
KNOWN_STATUSES: frozenset[str] = frozenset(get_args(FinStatus))
_MAX_LOGGED = 128  # characters of an event name or field path in a log line


def _invalid(
    runtime: Runtime, kwargs: dict[str, Any], event_id: str, reason: str, detail: str
) -> None:
    event = kwargs.get("event")
    cid = event.get("conversation_id") if isinstance(event, dict) else None
    pipe = runtime.redis.pipeline(transaction=True)
    dead_letter(
        pipe,
        runtime.names,
        dead_id=event_id,
        envelope_id=f"{event_id}.dead",
        kind=DEAD_EVENT,
        task=TASK_EVENT,
        task_id=event_id,
        kwargs=kwargs,
        reason=reason,
        conversation_id=cid if isinstance(cid, str) else None,
        data={"error": detail, "received_at_ms": kwargs.get("received_at_ms")},
        maxlen=runtime.settings.fin_relay_stream_maxlen,
    )
    pipe.execute()
    metrics.event_dead(reason)
    log.warning("event=%s conv=%s dead-lettered: %s: %s", event_id, cid or "-", reason, detail)


def not_an_event(event: Any) -> str | None:
    """Why ``event`` cannot be published as an event (the dead letter's error), or ``None``."""
    if not isinstance(event, dict):
        return "event is not a JSON object"
    for field in ("event_name", "conversation_id"):
        if field not in event:
            return f"{field} is missing"
        value = event[field]
        if not isinstance(value, str) or not value:
            return f"{field} is not a non-empty string"
    return None


def _unexpected_fields(exc: ValueError) -> str:
    """``field (error type)`` for each problem of a failed parse: never the values."""
    if not isinstance(exc, ValidationError):
        return type(exc).__name__
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(event)"
        parts.append(f"{where[:_MAX_LOGGED]} ({error['type']})")
    return ", ".join(dict.fromkeys(parts))


def run_event(
    runtime: Runtime, kwargs: dict[str, Any], task_id: str, delivery_tag: str = ""
) -> None:
    """Process one ``fin.event`` delivery (idempotent: same envelope id on redelivery).
    ``delivery_tag``: the broker's tag of this delivery, acknowledged in the publishing
    transaction where the broker allows (``transport.ack_commands``)."""
    raw, event_id = kwargs.get("event"), kwargs.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        event_id = task_id
    problem = not_an_event(raw)
    if problem is not None or not isinstance(raw, dict):
        _invalid(
            runtime, kwargs, event_id, "invalid_event", problem or "event is not a JSON object"
        )
        return
    name: str = raw["event_name"]
    conversation_id: str = raw["conversation_id"]
    event: FinEvent | None
    unexpected: str | None = None
    try:
        event = parse_event(raw)
    except ValueError as exc:  # pydantic's ValidationError: an event of an unexpected shape
        event, unexpected = None, _unexpected_fields(exc)
        if name not in KNOWN_EVENTS:
            unexpected = f"event_name (unknown event), {unexpected}"
    marker = runtime.names.job(f"event:{event_id}")
    status: str | None = None
    if isinstance(event, FinStatusUpdatedEvent | FinRepliedEvent):
        if event.status in KNOWN_STATUSES:
            status = event.status
        else:  # only if the models ever let a status through that fin-relay does not know
            unexpected = "status (unknown value)"
    elif isinstance(event, GenericEvent):
        unexpected = "event_name (unknown event)"
    now_ms = int(time.time() * 1000)
    envelope = Envelope.now(id=event_id, type=name, conversation_id=conversation_id, data=raw)
    # One MULTI/EXEC, shared with the other threads' round trips (worker.batching): the state,
    # the envelope published unless its marker says a delivery already did, and the marker.
    # The state update goes in either way: it never moves backwards in Fin's time, so applying
    # an event twice changes nothing.
    pipe = runtime.redis.pipeline(transaction=True)
    if status is not None and isinstance(event, FinStatusUpdatedEvent | FinRepliedEvent):
        runtime.sequencer.add_event_state(
            pipe, conversation_id, status, event.created_at_ms, now_ms
        )
    published_at = add_publish_once(
        pipe,
        runtime.names,
        runtime.names.events,
        envelope,
        maxlen=runtime.settings.fin_relay_stream_maxlen,
        marker=marker,
        marker_value=str(now_ms),
        marker_ttl_s=STATE_TTL_S,
    )
    replies = runtime.commit(pipe, delivery_tag)  # the broker's ack too when it is this Redis
    if not replies[published_at]:  # a redelivery after it was published: publish once
        log.info("event=%s duplicate delivery: already published", event_id)
        return
    if unexpected is not None:
        log.info(
            "event=%s name=%s unknown or unexpected fields: %s; published as received, "
            "conversation state unchanged",
            event_id,
            name[:_MAX_LOGGED],
            unexpected,
        )
    received = kwargs.get("received_at_ms")
    lag = now_ms - received if isinstance(received, int) else -1
    metrics.event_published(lag)
    log.info(
        "event=%s conv=%s type=%s status=%s lag_ms=%d",
        event_id,
        conversation_id,
        name[:_MAX_LOGGED],
        status or "-",
        lag,
    )

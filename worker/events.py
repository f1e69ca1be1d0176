"""The ``fin.event`` task's work: parse a Fin webhook event, update the conversation state, and
publish it to ``{ns}:events`` and ``{ns}:conversation:{id}`` — one round trip.

Contract with the ingest (fixed): kwargs ``event`` (the raw Fin JSON object), ``event_id``
(stable de-dup key; becomes the envelope id, so a redelivery publishes the same id) and
``received_at_ms``. Unknown event names are published under their own name. A marker
(``names.job("event:<event_id>")``, 7 days) written in the same transaction as the publish makes
a redelivered event publish nothing new.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import ValidationError

from fin_relay.contract.conversation import STATE_TTL_S
from fin_relay.contract.envelope import Envelope
from fin_relay.contract.fin_api import (
    FinRepliedEvent,
    FinStatusUpdatedEvent,
    parse_event,
)
from fin_relay.contract.jobs import DEAD_EVENT, dead_letter
from fin_relay.contract.names import TASK_EVENT
from fin_relay.contract.publish import add_publish
from fin_relay.worker import lua, metrics
from fin_relay.worker.runtime import Runtime

log = logging.getLogger("fin_relay.worker.events")


def _invalid(rt: Runtime, kwargs: dict[str, Any], event_id: str, reason: str, detail: str) -> None:
    event = kwargs.get("event")
    cid = event.get("conversation_id") if isinstance(event, dict) else None
    pipe = rt.redis.pipeline(transaction=True)
    dead_letter(
        pipe,
        rt.names,
        dead_id=event_id,
        envelope_id=f"{event_id}.dead",
        kind=DEAD_EVENT,
        task=TASK_EVENT,
        task_id=event_id,
        kwargs=kwargs,
        reason=reason,
        conversation_id=cid if isinstance(cid, str) else None,
        data={"error": detail, "received_at_ms": kwargs.get("received_at_ms")},
        maxlen=rt.settings.fin_relay_stream_maxlen,
    )
    pipe.execute()
    metrics.event_dead(reason)
    log.warning("event=%s conv=%s dead-lettered: %s: %s", event_id, cid or "-", reason, detail)


def run_event(rt: Runtime, kwargs: dict[str, Any], task_id: str) -> None:
    """Process one ``fin.event`` delivery (idempotent: same envelope id on redelivery)."""
    raw, event_id = kwargs.get("event"), kwargs.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        event_id = task_id
    if not isinstance(raw, dict):
        _invalid(rt, kwargs, event_id, "invalid_event", "event is not a JSON object")
        return
    try:
        event = parse_event(raw)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        _invalid(rt, kwargs, event_id, "invalid_event", detail)
        return
    marker = rt.names.job(f"event:{event_id}")
    if rt.redis.exists(marker):  # a redelivery after it was published: publish once
        log.info("event=%s duplicate delivery: already published", event_id)
        return
    now_ms = int(time.time() * 1000)
    envelope = Envelope.now(
        id=event_id, type=event.event_name, conversation_id=event.conversation_id, data=raw
    )
    pipe = rt.redis.pipeline(transaction=True)
    status = None
    if isinstance(event, FinStatusUpdatedEvent | FinRepliedEvent):
        status = event.status
        rt.sequencer.add_event_state(
            pipe, event.conversation_id, status, event.created_at_ms, now_ms
        )
    add_publish(
        pipe, rt.names, rt.names.events, envelope, maxlen=rt.settings.fin_relay_stream_maxlen
    )
    pipe.set(marker, now_ms, ex=STATE_TTL_S)
    lua.execute(rt.redis, pipe)
    received = kwargs.get("received_at_ms")
    lag = now_ms - received if isinstance(received, int) else -1
    metrics.event_published(lag)
    log.info(
        "event=%s conv=%s type=%s status=%s lag_ms=%d",
        event_id,
        event.conversation_id,
        event.event_name,
        status or "-",
        lag,
    )

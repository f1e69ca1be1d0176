"""Fast construction of the ``fin.event`` Celery message, byte-compatible with ``celery_wire``.

:func:`fin_relay.contract.celery_wire.task_message` is the reference encoding; building it per
request costs about 24 µs (two ``json.dumps`` of the event), a third of the ingest's budget. This
builder renders the same document from a template made once by ``task_message`` itself, and
splices the verified body's JSON text in as the ``event`` value instead of re-encoding it
(a test checks both produce the same message).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import uuid
from typing import Any

from fin_relay.contract.celery_wire import task_message
from fin_relay.contract.names import TASK_EVENT

#: Namespace of the uuid5 Celery task ids derived from event ids (stable across redeliveries).
TASK_ID_NAMESPACE = uuid.UUID("6f0b6c57-3c1e-4d55-9d43-2f9b1f7f5e21")
_NS_BYTES = TASK_ID_NAMESPACE.bytes
_ENCODE_STR: Any = json.encoder.encode_basestring  # C-accelerated JSON string
_MARK_TID = "00000000-0000-4000-8000-00000000f1d0"
_MARK_BODY = "@@fin-relay-body@@"
_MARK_TAG = "@@fin-relay-tag@@"


def task_id_for(event_id: str) -> str:
    """``str(uuid.uuid5(TASK_ID_NAMESPACE, event_id))``, computed without the UUID class."""
    raw = bytearray(hashlib.sha1(_NS_BYTES + event_id.encode(), usedforsecurity=False).digest())
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    x = raw[:16].hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:32]}"


def event_kwargs(event: dict[str, Any], event_id: str, received_at_ms: int) -> dict[str, Any]:
    """The keyword arguments of the ``fin.event`` task (the contract with the worker)."""
    return {"event": event, "event_id": event_id, "received_at_ms": received_at_ms}


class EventMessageBuilder:
    """Renders ``task_message("fin.event", event_kwargs(...), task_id=task_id_for(event_id))``."""

    def __init__(self) -> None:
        _tid, payload = task_message(TASK_EVENT, event_kwargs({}, "", 0), task_id=_MARK_TID)
        document = json.loads(payload)
        body = json.loads(base64.b64decode(document["body"]))
        self._embed = json.dumps(body[2], separators=(",", ":"), ensure_ascii=False)
        document["body"] = _MARK_BODY
        document["properties"]["delivery_tag"] = _MARK_TAG
        template = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
        template = template.replace("%", "%%").replace(_MARK_TID, "%(tid)s")
        template = template.replace(_MARK_BODY, "%(body)s").replace(_MARK_TAG, "%(tag)s")
        self._template = template
        # kombu treats the delivery tag as an opaque unique string (it keys the unacked hash);
        # a per-builder random prefix plus a counter is unique and cheaper than uuid4 per message.
        self._tag_prefix = uuid.uuid4().hex + "-"
        self._tags = itertools.count(1)

    def build(self, event_json: str, event_id: str, received_at_ms: int) -> str:
        """The Redis list payload for an event given as JSON text (a verified JSON object).

        Raises ``UnicodeEncodeError`` when the text holds lone surrogates.
        """
        body = (
            '[[],{"event":'
            + event_json
            + ',"event_id":'
            + _ENCODE_STR(event_id)
            + ',"received_at_ms":'
            + str(int(received_at_ms))
            + "},"
            + self._embed
            + "]"
        )
        return self._template % {
            "tid": task_id_for(event_id),
            "body": binascii.b2a_base64(body.encode(), newline=False).decode("ascii"),
            "tag": self._tag_prefix + str(next(self._tags)),
        }

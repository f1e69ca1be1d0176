"""The ``fin.event`` task message, as the ingest builds it: what is ingest-specific.

The message itself comes from :mod:`fin_relay.contract.celery_wire` (its
:class:`~fin_relay.contract.celery_wire.TaskTemplate`, byte-compatible with ``task_message``);
here are the event's task id (derived from the event id), its keyword arguments, and the
splicing of the verified body's JSON text in as the ``event`` value instead of re-encoding it
(a test checks the result equals ``task_message``'s).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from fin_relay.contract.celery_wire import TaskParts, TaskTemplate
from fin_relay.contract.names import TASK_EVENT

#: Namespace of the uuid5 Celery task ids derived from event ids (stable across redeliveries).
TASK_ID_NAMESPACE = uuid.UUID("6f0b6c57-3c1e-4d55-9d43-2f9b1f7f5e21")
_NS_BYTES = TASK_ID_NAMESPACE.bytes
_ENCODE_STR: Any = json.encoder.encode_basestring  # C-accelerated JSON string


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
    """Renders ``task_message("fin.event", event_kwargs(...), task_id=task_id_for(event_id))``
    from the event's JSON bytes (see :class:`~fin_relay.contract.celery_wire.TaskTemplate`)."""

    def __init__(self) -> None:
        self._template = TaskTemplate(TASK_EVENT, tuple(event_kwargs({}, "", 0)))
        self._render = self._template.render

    def build_bytes(self, event_json: bytes, event_id: str, received_at_ms: int) -> bytes:
        """The Redis list payload for an event given as UTF-8 JSON bytes (a verified object)."""
        values = (event_json, _ENCODE_STR(event_id).encode(), b"%d" % received_at_ms)
        return self._render(task_id_for(event_id), values)

    def build(self, event_json: str | bytes, event_id: str, received_at_ms: int) -> str:
        """The same payload as text; ``event_json`` as JSON text or UTF-8 bytes.

        Raises ``UnicodeEncodeError`` when the text holds lone surrogates.
        """
        raw = event_json.encode() if isinstance(event_json, str) else event_json
        return self.build_bytes(raw, event_id, int(received_at_ms)).decode()

    def parts(self, event_json: str | bytes, event_id: str, received_at_ms: int) -> TaskParts:
        """The same message as headers, properties and body bytes (for a kombu publish).

        Raises ``UnicodeEncodeError`` when the text holds lone surrogates.
        """
        raw = event_json.encode() if isinstance(event_json, str) else event_json
        values = (raw, _ENCODE_STR(event_id).encode(), b"%d" % int(received_at_ms))
        return self._template.parts(task_id_for(event_id), values)

"""The JSON envelope carried by every stream entry and pub/sub message (the wire contract).

```json
{"id": "stable unique id (same on redelivery)", "type": "fin_replied",
 "conversation_id": "ext-123", "occurred_at": "2025-01-24T10:00:00.123Z",
 "data": {"...": "the Fin event, or the call's request summary and Fin's response or error"}}
```

Stream entries have the fields ``type``, ``conversation_id`` and ``envelope`` (the JSON). The
entry's fields always agree with its envelope: ``type`` is the envelope's type, and
``conversation_id`` is the envelope's conversation id when it has one and **absent** when the
envelope's is ``null`` (never an empty string). An empty conversation id is not an id: it is
stored as ``null``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from fin_relay.contract.fin_api import format_fin_time
from fin_relay.contract.redisproto import text


class Envelope(BaseModel):
    """One published fact: a Fin event or a call outcome."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    type: str
    conversation_id: str | None = None
    occurred_at: str
    data: dict[str, Any]

    @field_validator("conversation_id", mode="before")
    @classmethod
    def _no_empty_id(cls, value: Any) -> Any:
        return None if value == "" else value

    @classmethod
    def now(
        cls,
        *,
        id: str,
        type: str,
        conversation_id: str | None,
        data: dict[str, Any],
        occurred_at: datetime | None = None,
    ) -> Envelope:
        moment = occurred_at or datetime.now(UTC)
        return cls(
            id=id,
            type=type,
            conversation_id=conversation_id,
            occurred_at=format_fin_time(moment),
            data=data,
        )

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)

    def stream_fields(self) -> dict[str, str]:
        """The fields of a stream entry: ``type``, ``conversation_id`` (only when the envelope
        has one), ``envelope``."""
        if self.conversation_id is None:
            return {"type": self.type, "envelope": self.to_json()}
        return {
            "type": self.type,
            "conversation_id": self.conversation_id,
            "envelope": self.to_json(),
        }

    @classmethod
    def from_stream_fields(cls, fields: dict[Any, Any]) -> Envelope:
        """The envelope of a stream entry (``str`` or ``bytes`` keys and values).

        Raises ``ValueError`` when there is no ``envelope`` field or it is not an envelope.
        (Entries written before the fields agreed with the envelope have ``conversation_id``
        ``""`` for a ``null`` one: they still read, see :func:`fields_agree`.)
        """
        raw = fields.get("envelope", fields.get(b"envelope"))
        if raw is None:
            raise ValueError("stream entry has no 'envelope' field")
        return cls.model_validate_json(raw)


def _field(fields: dict[Any, Any], name: str) -> str | None:
    value = fields.get(name, fields.get(name.encode()))
    return None if value is None else text(value)


def stream_conversation_id(fields: dict[Any, Any]) -> str | None:
    """A stream entry's ``conversation_id`` field, ``None`` when absent (or, in entries written
    before the fields agreed with the envelope, empty) — for filtering without parsing JSON."""
    return _field(fields, "conversation_id") or None


def fields_agree(fields: dict[Any, Any], envelope: Envelope, *, strict: bool = True) -> bool:
    """Whether a stream entry's ``type`` and ``conversation_id`` fields say what its envelope
    says (``conversation_id`` absent <-> ``null``). ``strict=False`` also accepts the empty
    string older entries used for ``null``."""
    if _field(fields, "type") != envelope.type:
        return False
    cid = _field(fields, "conversation_id")
    if cid == "" and not strict:
        cid = None
    return cid == envelope.conversation_id

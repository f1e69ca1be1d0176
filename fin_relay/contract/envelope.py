"""The JSON envelope carried by every stream entry and pub/sub message (``design.md``).

```json
{"id": "stable unique id (same on redelivery)", "type": "fin_replied",
 "conversation_id": "ext-123", "occurred_at": "2025-01-24T10:00:00.123Z",
 "data": {"...": "the Fin event, or the call's request summary and Fin's response or error"}}
```

Stream entries have the fields ``type``, ``conversation_id`` and ``envelope`` (the JSON).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from fin_relay.contract.fin_api import format_fin_time


class Envelope(BaseModel):
    """One published fact: a Fin event or a call outcome."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    type: str
    conversation_id: str | None = None
    occurred_at: str
    data: dict[str, Any]

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
        """The fields of a stream entry: ``type``, ``conversation_id``, ``envelope``."""
        return {
            "type": self.type,
            "conversation_id": self.conversation_id or "",
            "envelope": self.to_json(),
        }

    @classmethod
    def from_stream_fields(cls, fields: dict[Any, Any]) -> Envelope:
        raw = fields.get("envelope", fields.get(b"envelope"))
        if raw is None:
            raise ValueError("stream entry has no 'envelope' field")
        return cls.model_validate_json(raw)

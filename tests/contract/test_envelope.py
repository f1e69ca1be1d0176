from __future__ import annotations

import json

from fin_relay.contract.envelope import Envelope


def test_envelope_shape_and_stream_fields() -> None:
    env = Envelope.now(id="e1", type="fin_replied", conversation_id="ext-123", data={"a": 1})
    body = json.loads(env.to_json())
    assert set(body) == {"id", "type", "conversation_id", "occurred_at", "data"}
    assert body["occurred_at"].endswith("Z") and len(body["occurred_at"]) == 24
    fields = env.stream_fields()
    assert set(fields) == {"type", "conversation_id", "envelope"}
    assert Envelope.from_stream_fields(fields) == env
    assert Envelope.from_stream_fields({k.encode(): v.encode() for k, v in fields.items()}) == env

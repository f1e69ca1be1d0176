"""The ``fin.event`` task's decisions without Redis: what is an event, which statuses move the
conversation state, what the INFO line says about an unexpected shape (never a value)."""

from __future__ import annotations

from typing import Any

import pytest

from fin_relay.contract.fin_api import ValidationError, parse_event
from fin_relay.worker.events import KNOWN_STATUSES, _unexpected_fields, not_an_event


def test_known_statuses_are_every_documented_status() -> None:
    # 2.14/2.15 + replying (2.16) + thinking and complete (2.17): a status outside this set
    # never changes the conversation state
    assert KNOWN_STATUSES == {
        "thinking",
        "replying",
        "awaiting_user_reply",
        "escalated",
        "resolved",
        "complete",
    }


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (["a"], "event is not a JSON object"),
        ("text", "event is not a JSON object"),
        (None, "event is not a JSON object"),
        ({}, "event_name is missing"),
        ({"event_name": None, "conversation_id": "c"}, "event_name is not a non-empty string"),
        ({"event_name": "", "conversation_id": "c"}, "event_name is not a non-empty string"),
        ({"event_name": "x"}, "conversation_id is missing"),
        ({"event_name": "x", "conversation_id": 1}, "conversation_id is not a non-empty string"),
        ({"event_name": "x", "conversation_id": ""}, "conversation_id is not a non-empty string"),
        ({"event_name": "x", "conversation_id": "c"}, None),
        ({"event_name": "fin_replied", "conversation_id": "c", "status": 3}, None),
    ],
)
def test_only_what_cannot_be_an_event_is_refused(event: Any, problem: str | None) -> None:
    assert not_an_event(event) == problem


def test_unexpected_fields_name_fields_and_error_types_never_values() -> None:
    event = {
        "event_name": "fin_status_updated",
        "conversation_id": "c",
        "user_id": "u",
        "status": "secret-looking-value",
        "created_at_ms": 17,
    }
    with pytest.raises(ValidationError) as info:
        parse_event(event)
    text = _unexpected_fields(info.value)
    assert "status (literal_error)" in text and "created_at_ms (string_type)" in text
    assert "secret-looking-value" not in text and "17" not in text
    assert _unexpected_fields(ValueError("x")) == "ValueError"

"""Validation, stamping and options: the pure half of the producer (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fin_relay.contract.errors import InvalidJobError
from fin_relay.contract.fin_api import FinUser, OutgoingMessage
from fin_relay.producer.prepare import prepare
from tests.producer.helpers import USER

NOW = datetime(2025, 1, 24, 10, 0, 0, 123000, tzinfo=UTC)


def test_start_stamps_timestamp_once_and_carries_options() -> None:
    message = {"author": "user", "body": "hi"}
    job = prepare(
        "start",
        {
            "conversation_id": "c1",
            "user": USER,
            "message": message,
            "metadata": {"order": 7},
            "correlation_id": "corr-1",
            "expires_in_s": 60,
        },
        now=NOW,
    )
    assert job.task == "fin.start" and job.queue == "fin.calls"
    assert job.kwargs["message"]["timestamp"] == "2025-01-24T10:00:00.123Z"
    assert "timestamp" not in message  # the caller's dict is not mutated
    assert job.kwargs["relay"] == {
        "metadata": {"order": 7},
        "correlation_id": "corr-1",
        "expires_at": "2025-01-24T10:01:00.123Z",
        "enqueued_at_ms": int(NOW.timestamp() * 1000),
    }
    assert job.conversation_id == "c1" and not job.caller_chose_id


def test_caller_timestamp_is_kept_and_models_are_accepted() -> None:
    job = prepare(
        "reply",
        {
            "conversation_id": "c1",
            "user": FinUser(id="u-1"),
            "message": OutgoingMessage(
                author="user", body="again", timestamp="2025-01-01T00:00:00.000Z"
            ),
            "job_id": "my-id",
        },
        now=NOW,
    )
    assert job.kwargs["message"]["timestamp"] == "2025-01-01T00:00:00.000Z"
    assert job.kwargs["user"] == {"id": "u-1"}
    assert job.job_id == "my-id" and job.caller_chose_id


def test_text_message_becomes_a_user_message() -> None:
    job = prepare("ask", {"conversation_id": "c", "user": USER, "message": "why?"}, now=NOW)
    assert job.kwargs["message"]["author"] == "user"
    assert job.kwargs["message"]["body"] == "why?"


@pytest.mark.parametrize(
    ("operation", "arguments", "field"),
    [
        ("start", {"conversation_id": "c", "message": "x"}, "user"),
        (
            "start",
            {"conversation_id": "c", "message": "x", "user": {"id": "u", "email": "no"}},
            "user.email",
        ),
        ("reply", {"conversation_id": "c", "message": "x", "user": USER, "colour": 1}, "colour"),
        ("csat", {"conversation_id": "c", "rating": "superb"}, "rating"),
        ("procedure_run", {"conversation_id": "c", "user": USER}, "procedure_id"),
        (
            "start",
            {"conversation_id": "c", "message": "x", "user": USER, "job_id": "a b"},
            "job_id",
        ),
        (
            "start",
            {"conversation_id": "c", "message": "x", "user": USER, "expires_in_s": -1},
            "expires_in_s",
        ),
        ("escalate", {"conversation_id": "c", "user": USER}, "either conversation_id or user"),
    ],
)
def test_validation_error_names_the_field(operation: str, arguments: dict, field: str) -> None:
    with pytest.raises(InvalidJobError) as info:
        prepare(operation, arguments, now=NOW)
    assert field in str(info.value)


def test_unknown_operation() -> None:
    with pytest.raises(InvalidJobError, match="unknown operation"):
        prepare("frobnicate", {}, now=NOW)


def test_procedure_run_keeps_the_procedure_id_kwarg() -> None:
    job = prepare(
        "procedure_run",
        {"procedure_id": "p-9", "conversation_id": "c", "user": USER, "message": "go"},
        now=NOW,
    )
    assert job.task == "fin.procedure_run"
    assert job.kwargs["procedure_id"] == "p-9"
    assert "timestamp" not in job.kwargs["message"]  # only start/reply/ask are stamped


def test_expires_at_accepts_datetime_and_rejects_both_forms() -> None:
    job = prepare(
        "csat",
        {"conversation_id": "c", "rating": "good", "expires_at": datetime(2030, 1, 1, tzinfo=UTC)},
        now=NOW,
    )
    assert job.kwargs["relay"]["expires_at"] == "2030-01-01T00:00:00.000Z"
    with pytest.raises(InvalidJobError, match="not both"):
        prepare(
            "csat",
            {"conversation_id": "c", "rating": "good", "expires_at": NOW, "expires_in_s": 1},
            now=NOW,
        )

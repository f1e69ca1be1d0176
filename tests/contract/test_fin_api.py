"""Every JSON example of the Fin Agent API spec parses into its model and re-serialises equal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from fin_relay.contract import fin_api as m

EXAMPLES: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "fin_examples" / "spec_examples.json").read_text()
)

MODELS: dict[str, type[BaseModel]] = {
    "error_401": m.ErrorList,
    "error_envelope": m.ErrorList,
    "attribute_errors": m.AttributeErrors,
    "start_request": m.StartRequest,
    "start_response": m.FinResponse,
    "reply_request": m.ReplyRequest,
    "capabilities_response": m.CapabilitiesResponse,
    "escalate_response_existing": m.EscalateResponse,
    "escalate_response_new": m.EscalateResponse,
    "csat_request": m.CsatRequest,
    "csat_response": m.CsatResponse,
    "csat_422_not_found": m.CsatErrorBody,
    "csat_422_no_survey": m.CsatErrorBody,
    "csat_422_window_closed": m.CsatErrorBody,
    "csat_422_locked": m.CsatErrorBody,
    "csat_422_rating": m.CsatErrorBody,
    "error_429": m.ErrorList,
    "error_400_conversation_id": m.ErrorList,
    "error_400_version": m.ErrorList,
    "error_403_data": m.ErrorList,
    "capabilities_request": m.CapabilitiesRequest,
    "ask_request": m.AskRequest,
    "procedure_run_request": m.ProcedureRunRequest,
    "escalate_request_conversation": m.EscalateRequest,
    "escalate_request_user": m.EscalateRequest,
}
EVENTS = {
    "event_fin_status_updated": m.FinStatusUpdatedEvent,
    "event_fin_replied": m.FinRepliedEvent,
    "event_fin_reply_chunk": m.FinReplyChunkEvent,
    "event_csat_requested": m.CsatRequestedEvent,
}


def test_every_example_is_covered() -> None:
    assert set(EXAMPLES) == set(MODELS) | set(EVENTS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_example_round_trips(name: str) -> None:
    body = EXAMPLES[name]
    model = MODELS[name].model_validate(body)
    assert m.dump(model) == body
    # and through JSON text, as it travels
    again = MODELS[name].model_validate_json(json.dumps(body))
    assert m.dump(again) == body


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_event_example_round_trips(name: str) -> None:
    body = EXAMPLES[name]
    event = m.parse_event(json.dumps(body).encode())
    assert type(event) is EVENTS[name]
    assert m.dump(event) == body


def test_unknown_event_is_generic_and_keeps_fields() -> None:
    body = {
        "event_name": "fin_took_a_nap",
        "conversation_id": "c1",
        "created_at_ms": "2025-01-24T10:00:00.123Z",
        "minutes": 5,
    }
    event = m.parse_event(body)
    assert isinstance(event, m.GenericEvent)
    assert event.event_name == "fin_took_a_nap"
    assert m.dump(event) == body


def test_unknown_fields_from_fin_are_kept() -> None:
    body = dict(EXAMPLES["start_response"], intercom_conversation_id="987")
    assert m.dump(m.FinResponse.model_validate(body))["intercom_conversation_id"] == "987"


def _error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in err["loc"]) for err in exc.errors()}


def test_eleven_attachments_rejected_naming_field() -> None:
    body = dict(EXAMPLES["start_request"])
    body["attachments"] = [{"type": "url", "url": f"https://e.com/{i}"} for i in range(11)]
    with pytest.raises(ValidationError) as info:
        m.StartRequest.model_validate(body)
    assert "attachments" in _error_fields(info.value)


def test_missing_user_id_rejected_naming_field() -> None:
    body = json.loads(json.dumps(EXAMPLES["start_request"]))
    del body["user"]["id"]
    with pytest.raises(ValidationError) as info:
        m.StartRequest.model_validate(body)
    assert "user.id" in _error_fields(info.value)


def test_wrong_enum_rejected_naming_field() -> None:
    body = json.loads(json.dumps(EXAMPLES["start_request"]))
    body["message"]["author"] = "robot"
    with pytest.raises(ValidationError) as info:
        m.StartRequest.model_validate(body)
    assert "message.author" in _error_fields(info.value)
    with pytest.raises(ValidationError) as info2:
        m.CsatRequest.model_validate({"conversation_id": "c", "rating": "meh"})
    assert "rating" in _error_fields(info2.value)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda b: b["conversation_metadata"].__setitem__(
                "history", [{"author": "user", "body": "x"}] * 11
            ),
            "conversation_metadata.history",
        ),
        (
            lambda b: b["user"].__setitem__("attributes", {f"a{i}": i for i in range(11)}),
            "user.attributes",
        ),
        (
            lambda b: b["conversation_metadata"].__setitem__(
                "attributes", {f"a{i}": i for i in range(11)}
            ),
            "conversation_metadata.attributes",
        ),
        (
            lambda b: b["conversation_metadata"]["history"][0].__setitem__("author", "fin"),
            "conversation_metadata.history.0.author",
        ),
        (
            lambda b: b["attachments"].__setitem__(1, {"type": "file", "name": "x.png"}),
            "attachments.1",
        ),
        (lambda b: b["message"].__setitem__("timestamp", "yesterday"), "message.timestamp"),
        (lambda b: b.__setitem__("conversation_metdata", {}), "conversation_metdata"),
        (lambda b: b.pop("conversation_id"), "conversation_id"),
    ],
)
def test_documented_limits(mutate: Any, field: str) -> None:
    body = json.loads(json.dumps(EXAMPLES["start_request"]))
    mutate(body)
    with pytest.raises(ValidationError) as info:
        m.StartRequest.model_validate(body)
    assert field in _error_fields(info.value) or any(
        f.startswith(field) for f in _error_fields(info.value)
    )


def test_escalate_one_of() -> None:
    with pytest.raises(ValidationError):
        m.EscalateRequest.model_validate({})
    with pytest.raises(ValidationError):
        m.EscalateRequest.model_validate({"conversation_id": "c", "user": {"id": "u"}})


def test_known_event_malformed_names_field() -> None:
    body = dict(EXAMPLES["event_fin_status_updated"], status="napping")
    with pytest.raises(ValidationError) as info:
        m.parse_event(body)
    assert "status" in _error_fields(info.value)


def test_statuses_by_version() -> None:
    assert "replying" not in m.response_statuses("2.15")
    assert "replying" in m.response_statuses("2.16")
    assert "replying" in m.response_statuses("Preview")
    assert m.fin_replied_statuses("2.14") == {"awaiting_user_reply"}
    assert "replying" in m.fin_replied_statuses("2.16")
    assert "thinking" in m.status_event_statuses("2.17")
    assert "thinking" not in m.status_event_statuses("2.16")
    assert m.version_at_least("Preview", "2.16")
    assert not m.version_at_least("2.13", "2.14")


def test_time_parsing_at_the_boundary() -> None:
    moment = m.parse_fin_time("2025-01-24T10:00:00.123Z")
    assert moment.microsecond == 123000 and moment.utcoffset() is not None
    assert m.format_fin_time(moment) == "2025-01-24T10:00:00.123Z"
    with pytest.raises(ValueError):
        m.parse_fin_time("2025-01-24 10:00")

"""Per-version requests: what each ``Intercom-Version`` accepts, refused at enqueue naming the
field and the version, and everything fin-relay sends proven against Intercom's own schemas
(closed to fields they do not list) by the simulator's independent validator."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fin_relay.contract.errors import InvalidJobError
from fin_relay.contract.fin_api import (
    API_VERSIONS,
    PREVIEW_ONLY_OPERATIONS,
    VersionPolicy,
    complete_timestamps,
)
from fin_relay.contract.jobs import validate_job
from fin_relay.producer.prepare import prepare
from fin_relay.simulator import spec

STABLE = ("2.14", "2.15", "2.16", "2.17")
USER = {"id": "u-1", "name": "Ada", "email": "ada@example.com"}
TS = "2025-01-24T10:01:20.123Z"


def job(operation: str, version: str, preview: bool = True, **body: Any):
    return validate_job(operation, body, VersionPolicy(version, preview))


def message(**extra: Any) -> dict[str, Any]:
    return {"author": "user", "body": "Hi", **extra}


# --- versions and operations -------------------------------------------------------------------


@pytest.mark.parametrize("version", API_VERSIONS)
@pytest.mark.parametrize("operation", sorted(PREVIEW_ONLY_OPERATIONS))
def test_preview_only_operations_go_out_as_preview(version: str, operation: str) -> None:
    bodies = {
        "ask": {"conversation_id": "c", "message": message(timestamp=TS), "user": USER},
        "escalate": {"conversation_id": "c"},
        "capabilities": {"user": USER},
        "procedure_run": {"conversation_id": "c", "user": USER, "procedure_id": "12345"},
    }
    validated = job(operation, version, **bodies[operation])
    assert validated.version == "Preview"
    assert validated.operation in spec.operations("Preview")


@pytest.mark.parametrize("version", STABLE)
@pytest.mark.parametrize("operation", sorted(PREVIEW_ONLY_OPERATIONS))
def test_preview_only_operations_refused_when_configured(version: str, operation: str) -> None:
    with pytest.raises(InvalidJobError) as info:
        job(operation, version, preview=False, user=USER, conversation_id="c", procedure_id="1")
    text = str(info.value)
    assert "exists only in Intercom-Version Preview" in text
    assert f"FIN_API_VERSION is {version}" in text
    assert operation not in spec.operations(version)


def test_preview_default_sends_preview_only_operations_as_preview_even_when_refusing() -> None:
    assert job("capabilities", "Preview", preview=False, user=USER).version == "Preview"


@pytest.mark.parametrize("version", API_VERSIONS)
def test_start_reply_csat_use_the_configured_version(version: str) -> None:
    assert job("start", version, conversation_id="c", message=message(), user=USER).version == (
        version
    )
    assert job("csat", version, conversation_id="c", rating="good").version == version


# --- refuse, never strip or invent ------------------------------------------------------------


@pytest.mark.parametrize("version", STABLE)
@pytest.mark.parametrize("operation", ["start", "reply"])
def test_settings_refused_where_the_version_has_none(version: str, operation: str) -> None:
    with pytest.raises(InvalidJobError) as info:
        job(
            operation,
            version,
            conversation_id="c",
            message=message(),
            user=USER,
            settings={"email": True},
        )
    assert f"settings: not accepted by Intercom-Version {version}" in str(info.value)


@pytest.mark.parametrize("operation", ["start", "reply"])
def test_settings_accepted_on_preview_start_and_reply(operation: str) -> None:
    validated = job(
        operation,
        "Preview",
        conversation_id="c",
        message=message(),
        user=USER,
        settings={"follow_up_questions": False, "email": True},
    )
    assert validated.body["settings"] == {"follow_up_questions": False, "email": True}


def test_settings_refused_on_ask_even_in_preview() -> None:
    with pytest.raises(InvalidJobError, match="settings: not accepted by Intercom-Version Preview"):
        job("ask", "Preview", conversation_id="c", message=message(), user=USER, settings={})


def test_response_format_is_refused_even_in_preview() -> None:
    with pytest.raises(InvalidJobError, match=r"settings\.response_format: not accepted"):
        job(
            "start",
            "Preview",
            conversation_id="c",
            message=message(),
            user=USER,
            settings={"response_format": "markdown"},
        )


def test_procedure_run_settings_take_email_only() -> None:
    ok = job(
        "procedure_run",
        "2.15",
        conversation_id="c",
        user=USER,
        procedure_id="1",
        settings={"email": True},
    )
    assert ok.body["settings"] == {"email": True}
    with pytest.raises(InvalidJobError, match=r"settings\.follow_up_questions: not accepted"):
        job(
            "procedure_run",
            "2.15",
            conversation_id="c",
            user=USER,
            procedure_id="1",
            settings={"follow_up_questions": False},
        )


@pytest.mark.parametrize("version", API_VERSIONS)
def test_untimed_history_item_refused(version: str) -> None:
    history = [
        {"author": "user", "body": "earlier", "timestamp": TS},
        {"author": "agent", "body": "x"},
    ]
    with pytest.raises(InvalidJobError) as info:
        job(
            "start",
            version,
            conversation_id="c",
            message=message(),
            user=USER,
            conversation_metadata={"history": history},
        )
    assert "conversation_metadata.history.1" in str(info.value)
    assert "needs timestamp or timestamp_ms" in str(info.value)


def test_timestamps_naming_two_instants_refused() -> None:
    with pytest.raises(InvalidJobError, match="different instants"):
        job(
            "start",
            "2.15",
            conversation_id="c",
            user=USER,
            message=message(timestamp=TS, timestamp_ms="2025-01-24T10:01:21.123Z"),
        )


def test_non_rfc3339_timestamp_refused() -> None:
    with pytest.raises(InvalidJobError, match="RFC 3339"):
        job(
            "start",
            "2.15",
            conversation_id="c",
            user=USER,
            message=message(timestamp="2025-01-24T10:01:20+0100"),
        )


def test_file_attachment_data_must_be_base64() -> None:
    bad = {"type": "file", "name": "a.png", "content_type": "image/png", "data": "not base64!"}
    with pytest.raises(InvalidJobError, match="base64"):
        job("start", "2.15", conversation_id="c", user=USER, message=message(), attachments=[bad])


def test_null_fields_are_left_out() -> None:
    body = job(
        "start",
        "2.15",
        conversation_id="c",
        user={"id": "u", "name": None, "attributes": {"plan": None}},
        message=message(timestamp=TS),
    ).body
    assert body["user"] == {"id": "u", "attributes": {"plan": None}}


# --- complete only where intent is unambiguous ---------------------------------------------


def test_timestamp_ms_only_gets_timestamp_for_the_same_instant() -> None:
    body = job(
        "start", "2.14", conversation_id="c", user=USER, message=message(timestamp_ms=TS)
    ).body
    assert body["message"]["timestamp"] == TS and body["message"]["timestamp_ms"] == TS


def test_timestamp_only_gets_timestamp_ms_in_fins_form() -> None:
    body = job(
        "reply",
        "2.17",
        conversation_id="c",
        user=USER,
        message=message(timestamp="2025-01-24T11:01:20+01:00"),
    ).body
    assert body["message"]["timestamp"] == "2025-01-24T11:01:20+01:00"
    assert body["message"]["timestamp_ms"] == "2025-01-24T10:01:20.000Z"


def test_history_items_get_both_timestamps() -> None:
    history = [{"author": "agent", "body": "x", "timestamp_ms": TS}]
    body = job(
        "start",
        "2.16",
        conversation_id="c",
        user=USER,
        message=message(),
        conversation_metadata={"history": history},
    ).body
    assert body["conversation_metadata"]["history"] == [
        {"author": "agent", "body": "x", "timestamp": TS, "timestamp_ms": TS}
    ]


def test_complete_timestamps_leaves_an_untimed_message_alone() -> None:
    assert complete_timestamps({"author": "user", "body": "b"}) == {"author": "user", "body": "b"}


# --- the producer checks against FIN_API_VERSION at enqueue -----------------------------------


def test_producer_refuses_settings_on_its_version() -> None:
    arguments = {"conversation_id": "c", "message": "Hi", "user": USER, "settings": {"email": True}}
    with pytest.raises(InvalidJobError, match="Intercom-Version 2.16"):
        prepare("start", arguments, versions=VersionPolicy("2.16"))
    prepared = prepare("start", arguments, versions=VersionPolicy("Preview"))
    message_sent = prepared.kwargs["message"]
    assert message_sent["timestamp"] == message_sent["timestamp_ms"]


# --- proof against Intercom's schemas (the simulator's independent validator) ----------------

_text = st.text(min_size=1, max_size=12)
_time = st.sampled_from([TS, "2025-01-24T10:01:20Z", "2025-01-24T11:01:20.5+01:00"])


def _sometimes(percent: int) -> st.SearchStrategy[bool]:
    return st.integers(0, 99).map(lambda n: n < percent)


@st.composite
def _message(
    draw: st.DrawFn, authors: tuple[str, ...] = ("user", "agent", "fin")
) -> dict[str, Any]:
    out: dict[str, Any] = {"author": draw(st.sampled_from(authors)), "body": draw(_text)}
    which = draw(st.sampled_from(["none", "ts", "ms", "both"]))
    stamp = draw(_time)
    if which in ("ts", "both"):
        out["timestamp"] = stamp
    if which in ("ms", "both"):
        out["timestamp_ms"] = complete_timestamps({"timestamp": stamp})["timestamp_ms"]
    if draw(_sometimes(10)):
        out[draw(st.sampled_from(["format", "id", "extra"]))] = "x"
    return out


@st.composite
def _user(draw: st.DrawFn) -> dict[str, Any]:
    user: dict[str, Any] = {"id": draw(_text)}
    optional = {
        "name": _text,
        "email": st.just("a@example.com"),
        "attributes": st.dictionaries(_text, st.one_of(_text, st.integers()), max_size=3),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            user[name] = draw(strategy)
    if draw(_sometimes(10)):
        user["role"] = "lead"
    return user


_attachment = st.one_of(
    st.just({"type": "url", "url": "https://example.com/a.pdf"}),
    st.just({"type": "file", "name": "a.png", "content_type": "image/png", "data": "QUJD"}),
)


@st.composite
def _settings(draw: st.DrawFn) -> dict[str, Any]:
    settings_: dict[str, Any] = {}
    if draw(st.booleans()):
        settings_["follow_up_questions"] = draw(st.booleans())
    if draw(st.booleans()):
        settings_["email"] = draw(st.booleans())
    if draw(_sometimes(15)):
        settings_["response_format"] = "markdown"
    return settings_


_OWN_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # operation: (fields it needs, fields it may have) - per Intercom's Preview schema
    "start": (
        ("conversation_id", "user", "message"),
        ("attachments", "conversation_metadata", "settings"),
    ),
    "ask": (("conversation_id", "user", "message"), ("attachments", "conversation_metadata")),
    "reply": (("conversation_id", "user", "message"), ("attachments", "settings")),
    "csat": (("conversation_id", "rating"), ("remark",)),
    "escalate": ((), ("conversation_id", "user", "message", "context")),
    "capabilities": (("user",), ()),
    "procedure_run": (
        ("conversation_id", "user"),
        ("message", "conversation_metadata", "settings"),
    ),
}


@st.composite
def _body(draw: st.DrawFn, operation: str) -> dict[str, Any]:
    """Mostly well-formed jobs of ``operation``, some with what a version does not take."""
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "conversation_id": _text,
        "user": _user(),
        "message": _text if operation == "escalate" else _message(),
        "rating": st.sampled_from(["good", "amazing", "ok"]),
        "attachments": st.lists(
            st.one_of(_attachment, st.just({"type": "file", "name": "a.png"})), max_size=2
        ),
        "conversation_metadata": st.fixed_dictionaries(
            {},
            optional={
                "history": st.lists(_message(("user", "agent")), max_size=3),
                "attributes": st.dictionaries(_text, _text, max_size=2),
            },
        ),
        "settings": _settings(),
        "remark": _text,
        "context": _text,
    }
    needed, optional = _OWN_FIELDS[operation]
    body: dict[str, Any] = {}
    for name in needed:
        if draw(_sometimes(95)):
            body[name] = draw(strategies[name])
    for name in optional:
        if draw(st.booleans()):
            body[name] = draw(strategies[name])
    if draw(_sometimes(10)):  # a field of another operation, or of none
        name = draw(st.sampled_from(sorted({*strategies, "unknown_field"} - {*needed, *optional})))
        body[name] = draw(strategies.get(name, _text))
    if operation == "procedure_run":
        body["procedure_id"] = "12345"
    return body


OPERATIONS = ("start", "reply", "csat", "ask", "escalate", "capabilities", "procedure_run")


@pytest.mark.parametrize("version", API_VERSIONS)
@pytest.mark.parametrize("operation", OPERATIONS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_everything_accepted_is_valid_for_the_version_it_is_sent_with(
    version: str, operation: str, data: st.DataObject
) -> None:
    body = data.draw(_body(operation))
    try:
        validated = validate_job(operation, dict(body), VersionPolicy(version))
    except InvalidJobError:
        return
    sent = dict(validated.body)
    message_sent = sent.get("message")
    if operation in ("start", "reply", "ask") and "timestamp" not in message_sent:
        # What the worker does for a job without a time: stamp one, send both fields.
        sent["message"] = complete_timestamps({**message_sent, "timestamp": TS})
    errors = spec.request_errors(validated.version, operation, sent)
    assert errors == [], (validated.version, operation, sent, errors)


@pytest.mark.parametrize("version", API_VERSIONS)
def test_closed_schema_refuses_what_we_refuse(version: str) -> None:
    """The refusals above are the schemas' own: e.g. settings on 2.14-2.17 start."""
    body = {"conversation_id": "c", "message": message(timestamp=TS, timestamp_ms=TS), "user": USER}
    assert spec.request_errors(version, "start", body) == []
    with_settings = {**body, "settings": {"email": True}}
    assert (spec.request_errors(version, "start", with_settings) == []) == (version == "Preview")

"""The schema module and the packaged schemas, without HTTP: closing, merging, formats, files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft4Validator

from fin_relay.contract.fin_api import API_VERSIONS
from fin_relay.simulator import regenerate_schemas, spec
from tests.simulator.helpers import example

SCHEMAS = Path(spec.__file__).resolve().parent / "schemas"
PROSE_KEYS = {"description", "example", "examples", "summary", "title"}


def _valid_start(**message_fields):
    body = example("start_request")
    body["message"].update(message_fields)
    return body


def _prose_keys(node, in_name_map=False):
    """Every prose key in ``node`` that is not a property *name*."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if not in_name_map and key in PROSE_KEYS:
                found.append(key)
            found += _prose_keys(value, in_name_map=not in_name_map and key == "properties")
    elif isinstance(node, list):
        for item in node:
            found += _prose_keys(item)
    return found


# --- versions and operations ---------------------------------------------------------------


def test_versions_match_the_contract_and_every_file_loads():
    assert spec.VERSIONS == ("2.14", "2.15", "2.16", "2.17", "Preview")
    assert spec.VERSIONS == API_VERSIONS
    for version in spec.VERSIONS:
        doc = spec.document(version)
        assert doc["openapi"].startswith("3.0")
        assert doc["info"]["version"] == version
        assert doc is spec.document(version)  # cached
    assert spec.document("preview") is spec.document("Preview")
    with pytest.raises(ValueError, match="unknown Intercom-Version"):
        spec.document("2.13")


def test_operation_table():
    stable = {"start": "/fin/start", "reply": "/fin/reply", "csat": "/fin/csat"}
    for version in ("2.14", "2.15", "2.16", "2.17"):
        assert spec.operations(version) == stable
    assert spec.operations("Preview") == {
        **stable,
        "ask": "/fin/ask",
        "escalate": "/fin/escalate",
        "capabilities": "/fin/capabilities",
        "procedure_run": "/fin/procedures/{procedure_id}/run",
    }
    assert spec.closed_request_schema("2.15", "ask") is None
    assert spec.closed_request_schema("Preview", "ask") is not None
    assert spec.request_errors("2.15", "ask", example("ask_request")) == [
        "(root): Intercom-Version 2.15 has no operation 'ask'"
    ]
    with pytest.raises(ValueError):
        spec.request_errors("2.13", "start", {})


# --- closing, allOf, nullable ----------------------------------------------------------------


def test_settings_on_2_14_passes_the_raw_schema_but_not_the_closed_one():
    doc = spec.document("2.14")
    raw = doc["paths"]["/fin/start"]["post"]["requestBody"]["content"]["application/json"]
    # The raw request schema with its components beside it, so "#/components/..." resolves.
    plain = Draft4Validator({**raw["schema"], "components": doc["components"]})
    body = _valid_start()
    body["settings"] = {"follow_up_questions": False}
    assert list(plain.iter_errors(body)) == []  # Intercom's schema alone lets it through
    closed = spec.closed_request_schema("2.14", "start")
    assert closed["additionalProperties"] is False
    assert spec.request_errors("2.14", "start", body) == [
        "settings: Additional properties are not allowed ('settings' was unexpected)"
    ]
    # Preview lists settings: accepted there, and its own fields are closed too.
    assert spec.request_errors("Preview", "start", body) == []
    body["settings"]["procedures"] = True  # removed from Preview in 2026
    assert spec.request_errors("Preview", "start", body) == [
        "settings.procedures: Additional properties are not allowed ('procedures' was unexpected)"
    ]


def test_closing_leaves_explicitly_open_objects_open():
    body = _valid_start()
    body["user"]["attributes"] = {"anything": {"nested": [1, 2]}}
    body["conversation_metadata"]["attributes"] = {"free": "form"}
    assert spec.request_errors("2.15", "start", body) == []
    body["user"]["nickname"] = "J"
    body["conversation_metadata"]["history"][0]["seen"] = True
    assert spec.request_errors("2.15", "start", body) == [
        "user.nickname: Additional properties are not allowed ('nickname' was unexpected)",
        "conversation_metadata.history.0.seen: Additional properties are not allowed "
        "('seen' was unexpected)",
    ]


def test_all_of_is_merged_before_closing_on_preview_capabilities():
    doc = spec.document("Preview")
    raw_user = doc["paths"]["/fin/capabilities"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["properties"]["user"]
    assert "allOf" in raw_user  # Intercom wraps the user in an allOf
    user = spec.closed_request_schema("Preview", "capabilities")["properties"]["user"]
    assert "allOf" not in user and "$ref" not in json.dumps(user)
    assert set(user["properties"]) == {"id", "name", "email", "attributes"}
    assert user["required"] == ["id"] and user["additionalProperties"] is False
    assert spec.request_errors("Preview", "capabilities", {"user": {"id": "1", "name": "x"}}) == []
    assert spec.request_errors("Preview", "capabilities", {"user": {"id": "1", "extra": 1}}) == [
        "user.extra: Additional properties are not allowed ('extra' was unexpected)"
    ]
    assert spec.request_errors("Preview", "capabilities", {"user": {}}) == [
        "user.id: 'id' is a required property"
    ]


def test_merge_unites_properties_and_required_and_keeps_conflicts():
    doc = {
        "components": {
            "schemas": {
                "a": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]},
                "b": {
                    "type": "object",
                    "properties": {"y": {"type": "integer", "maxLength": 3}},
                    "required": ["y", "x"],
                },
            }
        }
    }
    schema = {"allOf": [{"$ref": "#/components/schemas/a"}, {"$ref": "#/components/schemas/b"}]}
    merged = spec._close(spec._resolve(schema, doc))
    assert merged == {
        "type": "object",
        "properties": {"x": {"type": "string"}, "y": {"type": "integer", "maxLength": 3}},
        "required": ["x", "y"],
        "additionalProperties": False,
    }
    conflicting = spec._resolve({"allOf": [{"maxLength": 3}, {"maxLength": 5}]}, doc)
    assert conflicting == {"maxLength": 3, "allOf": [{"maxLength": 5}]}


def test_nullable_becomes_a_type_that_allows_null():
    resolved = spec._resolve(
        {
            "type": "object",
            "properties": {
                "s": {"type": "string", "nullable": True},
                "e": {"type": "string", "enum": ["a"], "nullable": True},
                "n": {"type": "string", "nullable": False},
            },
        },
        {},
    )
    validator = Draft4Validator(resolved)
    assert resolved["properties"]["s"] == {"type": ["string", "null"]}
    assert resolved["properties"]["n"] == {"type": "string"}
    assert validator.is_valid({"s": None, "e": None})
    assert not validator.is_valid({"n": None})
    assert not validator.is_valid({"e": "b"})


def test_every_packaged_request_and_event_schema_is_self_contained_and_valid_draft4():
    for version in spec.VERSIONS:
        for operation in spec.operations(version):
            schema = spec.closed_request_schema(version, operation)
            Draft4Validator.check_schema(schema)
            text = json.dumps(schema)
            assert "$ref" not in text and "nullable" not in text and "allOf" not in text
        for name in ("fin_status_updated", "fin_replied", "csat_requested"):
            assert spec.closed_event_schema(version, name) is not None
    # The returned schemas are copies: mutating one does not change validation.
    spec.closed_request_schema("2.15", "start")["required"].clear()
    assert spec.request_errors("2.15", "start", {})[0] == (
        "conversation_id: 'conversation_id' is a required property"
    )


# --- error lines -------------------------------------------------------------------------------


def test_request_errors_name_the_json_path():
    body = _valid_start()
    del body["message"]["timestamp"]
    body["attachments"][0]["type"] = "video"
    assert spec.request_errors("2.15", "start", body) == [
        "message.timestamp: 'timestamp' is a required property",
        "attachments.0.type: 'video' is not one of ['url', 'file']",
    ]
    # Preview and 2.17 do not require a timestamp; 2.17 still checks both when present.
    del body["attachments"]
    assert spec.request_errors("Preview", "start", body) == []
    assert spec.request_errors("2.17", "start", body) == []
    body["message"]["timestamp_ms"] = "yesterday"
    assert spec.request_errors("2.17", "start", body) == [
        "message.timestamp_ms: 'yesterday' is not a 'date-time'"
    ]
    assert spec.request_errors("2.15", "start", []) == ["(root): [] is not of type 'object'"]


def test_2_17_shape_is_the_documented_one():
    start = spec.closed_request_schema("2.17", "start")
    reply = spec.closed_request_schema("2.17", "reply")
    assert set(start["properties"]) == {
        "conversation_id",
        "message",
        "user",
        "attachments",
        "conversation_metadata",
    }
    assert set(reply["properties"]) == {"conversation_id", "message", "user", "attachments"}
    assert start["required"] == ["conversation_id", "message", "user"]
    assert start["properties"]["message"]["required"] == ["author", "body"]
    assert start["properties"]["attachments"]["maxItems"] == 10
    history = start["properties"]["conversation_metadata"]["properties"]["history"]
    assert history["maxItems"] == 10
    assert history["items"]["properties"]["author"]["enum"] == ["user", "agent"]
    assert spec.closed_event_schema("2.17", "fin_reply_chunk") is None  # SSE dropped
    status = spec.closed_event_schema("2.17", "fin_status_updated")["properties"]["status"]
    assert status["enum"] == [
        "awaiting_user_reply",
        "escalated",
        "resolved",
        "complete",
        "thinking",
    ]
    replied = spec.closed_event_schema("2.17", "fin_replied")
    assert replied["properties"]["status"]["enum"] == [
        "replying",
        "awaiting_user_reply",
        "complete",
    ]
    message = replied["properties"]["message"]["properties"]
    assert message["format"] == {"type": "string"} and message["sources"] == {"type": "array"}
    assert spec.closed_event_schema("2.17", "csat_requested") == spec.closed_event_schema(
        "2.16", "csat_requested"
    )


def test_event_errors_open_by_default_closed_on_request():
    event = {
        "event_name": "fin_replied",
        "conversation_id": "c",
        "user_id": "u",
        "message": {"id": "1", "author": "fin", "body": "<p>x</p>", "timestamp_ms": "2025-01-24T09:01:00.456Z", "new": 1},
        "status": "replying",
        "created_at_ms": "2025-01-24T10:00:00.123Z",
        "added_later": True,
    }  # fmt: skip
    assert spec.event_errors("2.16", event) == []
    assert spec.event_errors("2.16", event, closed=True) == [
        "message.new: Additional properties are not allowed ('new' was unexpected)",
        "added_later: Additional properties are not allowed ('added_later' was unexpected)",
    ]
    assert spec.event_errors("2.15", event) == [
        "status: 'replying' is not one of ['awaiting_user_reply']"
    ]
    unknown = spec.event_errors("2.16", {**event, "event_name": "fin_mood_changed"})
    assert len(unknown) == 1 and unknown[0].startswith("event_name: 'fin_mood_changed' is not")
    assert spec.event_errors("2.16", {"conversation_id": "c"}) == [
        "event_name: 'event_name' is a required property"
    ]
    assert (
        spec.closed_event_schema("2.16", "fin_replied", closed=True)["additionalProperties"]
        is False
    )
    assert "additionalProperties" not in spec.closed_event_schema("2.16", "fin_replied")


def test_documented_deviation_excuses_exactly_its_error():
    [deviation] = spec.DOCUMENTED_DEVIATIONS
    event = {
        "event_name": "fin_status_updated",
        "conversation_id": "c",
        "user_id": "u",
        "status": "awaiting_user_reply",
        "created_at_ms": "2025-01-24T10:00:00.123Z",
    }
    [error] = spec.event_errors("2.15", event)
    assert deviation.excuses("2.15", event, error)
    assert spec.event_errors("2.16", event) == []
    other = {**event, "status": "pondering"}
    [other_error] = spec.event_errors("2.15", other)
    assert not deviation.excuses("2.15", other, other_error)
    assert not deviation.excuses("2.16", event, error)


# --- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2025-01-24T10:01:20.000Z", True),
        ("2025-01-24T10:01:20Z", True),
        ("2025-01-24t10:01:20z", True),
        ("2025-01-24T10:01:20.123456789+05:30", True),
        ("2024-02-29T00:00:00Z", True),
        ("2016-12-31T23:59:60Z", True),
        ("2016-12-31T18:59:60-05:00", True),
        ("2025-01-24T10:01:60Z", False),
        ("2023-02-29T00:00:00Z", False),
        ("2025-13-01T00:00:00Z", False),
        ("2025-01-24 10:01:20Z", False),
        ("2025-01-24T10:01:20", False),
        ("2025-01-24T10:01:20+0100", False),
        ("2025-01-24T24:00:00Z", False),
        ("2025-01-24T10:01:20.Z", False),
        ("2025-01-24", False),
        ("", False),
    ],
)
def test_date_time_is_strict_rfc_3339(value, ok):
    assert (spec.parse_date_time(value) is not None) is ok
    assert spec.FORMAT_CHECKER.conforms(value, "date-time") is ok


def test_parse_date_time_is_an_instant():
    a = spec.parse_date_time("2025-01-24T10:01:20.000Z")
    b = spec.parse_date_time("2025-01-24T11:01:20+01:00")
    assert a == b and a.tzinfo is not None


@pytest.mark.parametrize(
    ("fmt", "value", "ok"),
    [
        ("email", "john.doe@example.com", True),
        ("email", "a@b", True),
        ("email", "john.doe", False),
        ("email", "@example.com", False),
        ("email", "a@", False),
        ("email", "a@b@c", False),
        ("uri", "https://example.com/document.pdf", True),
        ("uri", "mailto:someone@example.com", True),
        ("uri", "example.com/document.pdf", False),
        ("uri", "https://", False),
        ("uri", "https://exa mple.com", False),
        ("byte", "iVBORw0KGgo=", True),
        ("byte", "aGVsbG8gd29ybGQ=", True),
        ("byte", "", True),
        ("byte", "iVBORw0KGgo...", False),
        ("byte", "iVBORw0KGgo", False),
        ("byte", "aGVsbG8_d29ybGQ=", False),
        ("byte", "aGVsbG8=d29y", False),
    ],
)
def test_local_format_checks(fmt, value, ok):
    assert spec.FORMAT_CHECKER.conforms(value, fmt) is ok


# --- the packaged files and the regenerate script ---------------------------------------------


def test_packaged_files_carry_structure_only_and_credit_the_source():
    names = sorted(p.name for p in SCHEMAS.glob("*.json"))
    assert names == [
        "fin-agent-2.14.json",
        "fin-agent-2.15.json",
        "fin-agent-2.16.json",
        "fin-agent-2.17.json",
        "fin-agent-preview.json",
    ]
    for name in names:
        text = (SCHEMAS / name).read_text(encoding="utf-8")
        doc = json.loads(text)
        assert _prose_keys(doc) == [], name
        assert "x-source" in doc["info"] and len(doc["info"]) == 2
        assert text.endswith("}\n")
    for name in regenerate_schemas.DERIVED_FILES:
        doc = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
        assert doc["info"]["x-source"] == regenerate_schemas.SOURCE_NOTE
        version = doc["paths"]["/fin/start"]["post"]["parameters"][0]
        assert version["name"] == "Intercom-Version" and version["in"] == "header"
    # The capabilities response has a property called "description": structure, kept.
    preview = spec.document("Preview")
    items = preview["paths"]["/fin/capabilities"]["post"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]["properties"]["capabilities"]["items"]
    assert "description" in items["properties"]


def _synthetic_source(version):
    return {
        "openapi": "3.0.1",
        "info": {"title": "Intercom API", "version": version, "description": "Long prose."},
        "paths": {
            "/fin/start": {
                "post": {
                    "summary": "Start a conversation",
                    "description": "Prose.",
                    "tags": ["Fin Agent"],
                    "x-badges": [{"name": "Legacy"}],
                    "parameters": [
                        {
                            "name": "Intercom-Version",
                            "in": "header",
                            "schema": {"$ref": "#/components/schemas/intercom_version"},
                        }
                    ],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "title": "Start",
                                    "properties": {
                                        "title": {"type": "string", "description": "A name."},
                                        "description": {"type": "string", "example": "x"},
                                        "user": {
                                            "allOf": [
                                                {"$ref": "#/components/schemas/user"},
                                                {"description": "The user."},
                                            ]
                                        },
                                        "items": {"type": "array", "maxItems": 10},
                                    },
                                    "required": ["user"],
                                },
                                "examples": {"Basic": {"summary": "s", "value": {"user": {}}}},
                            }
                        }
                    },
                    "responses": {"200": {"description": "OK"}},
                }
            }
        },
        "components": {
            "schemas": {
                "intercom_version": {"type": "string", "example": version, "enum": [version]},
                "user": {
                    "type": "object",
                    "x-tags": ["Fin Agent"],
                    "properties": {
                        "email": {"type": "string", "format": "email", "nullable": True}
                    },
                },
            }
        },
    }


def test_regenerate_script_strips_prose_and_keeps_structure(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    versions = {"fin-agent-2.14.json": "2.14", "fin-agent-2.15.json": "2.15",
                "fin-agent-2.16.json": "2.16", "fin-agent-preview.json": "Preview"}  # fmt: skip
    for name, version in versions.items():
        (src / name).write_text(json.dumps(_synthetic_source(version)), encoding="utf-8")
    hand_written = dest / "fin-agent-2.17.json"
    hand_written.write_text("untouched\n", encoding="utf-8")
    command = [sys.executable, "-m", "fin_relay.simulator.regenerate_schemas", str(src), str(dest)]
    subprocess.run(command, check=True, capture_output=True)
    first = {name: (dest / name).read_bytes() for name in versions}
    doc = json.loads(first["fin-agent-2.15.json"])
    assert doc["info"] == {"version": "2.15", "x-source": regenerate_schemas.SOURCE_NOTE}
    post = doc["paths"]["/fin/start"]["post"]
    assert set(post) == {"parameters", "requestBody", "responses"}
    assert post["responses"] == {"200": {}}
    media = post["requestBody"]["content"]["application/json"]
    assert set(media) == {"schema"}
    assert media["schema"] == {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "description": {"type": "string"},
            "user": {"allOf": [{"$ref": "#/components/schemas/user"}, {}]},
            "items": {"type": "array", "maxItems": 10},
        },
        "required": ["user"],
    }
    assert doc["components"]["schemas"] == {
        "intercom_version": {"type": "string", "enum": ["2.15"]},
        "user": {
            "type": "object",
            "properties": {"email": {"type": "string", "format": "email", "nullable": True}},
        },
    }
    assert hand_written.read_text(encoding="utf-8") == "untouched\n"
    # Deterministic: a second run writes the same bytes, each ending with a newline.
    subprocess.run(command, check=True, capture_output=True)
    for name, data in first.items():
        assert (dest / name).read_bytes() == data
        assert data.endswith(b"}\n")


def test_regenerate_is_a_fixed_point_on_the_packaged_files(tmp_path):
    """Feeding the packaged derived files back in reproduces them byte for byte."""
    for name in regenerate_schemas.DERIVED_FILES:
        shutil.copy(SCHEMAS / name, tmp_path / name)
    out = tmp_path / "out"
    assert regenerate_schemas.main([str(tmp_path), str(out)]) == 0
    for name in regenerate_schemas.DERIVED_FILES:
        assert (out / name).read_bytes() == (SCHEMAS / name).read_bytes()
    assert not (out / "fin-agent-2.17.json").exists()


def test_regenerate_reports_missing_input(tmp_path, capsys):
    assert regenerate_schemas.main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "fin-agent-2.14.json" in capsys.readouterr().err

"""Over real HTTP: the simulator answers by Intercom's schema for the request's version."""

from __future__ import annotations

import httpx
import pytest

from fin_relay.simulator import spec
from tests.simulator.helpers import client, example

#: A valid body per operation (Preview's shapes; the stable versions accept start/reply/csat).
BODIES = {
    "start": lambda: example("start_request", conversation_id="t-start"),
    "reply": lambda: example("reply_request", conversation_id="t-none"),
    "csat": lambda: example("csat_request", conversation_id="t-none"),
    "ask": lambda: example("ask_request", conversation_id="t-ask"),
    "escalate": lambda: example("escalate_request_user"),
    "capabilities": lambda: example("capabilities_request"),
    "procedure_run": lambda: example("procedure_run_request", conversation_id="t-run"),
}
PATHS = {**spec.OPERATION_PATHS, "procedure_run": "/fin/procedures/12345/run"}


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert body["type"] == "error.list"
    assert body["request_id"] == response.headers["x-request-id"]
    [error] = body["errors"]
    return error


@pytest.mark.parametrize("version", spec.VERSIONS)
def test_operation_table_by_version(fin_simulator, version):
    sim = fin_simulator(reply_delay_ms=60_000)
    available = spec.operations(version)
    with client(sim, version) as c:
        for operation, body in BODIES.items():
            response = c.post(PATHS[operation], json=body())
            if operation in available:
                assert response.status_code != 400 or _error(response)["code"] != (
                    "intercom_version_invalid"
                ), (operation, response.text)
            else:
                assert response.status_code == 400, (operation, response.text)
                assert _error(response) == {
                    "code": "intercom_version_invalid",
                    "message": "Requested resource is not available in current API version.",
                    "field": "Intercom-Version",
                }
    expected_ok = {"start", "ask", "escalate", "capabilities", "procedure_run"} & set(available)
    statuses = {r["endpoint"]: r["status"] for r in sim.control.requests()}
    assert {op for op, status in statuses.items() if status == 200} == expected_ok


def test_ask_is_preview_only(fin_simulator):
    sim = fin_simulator()
    with client(sim, "2.15") as c:
        refused = c.post("/fin/ask", json=example("ask_request"))
    with client(sim, "Preview") as c:
        accepted = c.post("/fin/ask", json=example("ask_request"))
    assert refused.status_code == 400
    assert _error(refused)["code"] == "intercom_version_invalid"
    assert accepted.status_code == 200 and accepted.json()["status"] == "thinking"


def test_settings_refused_on_stable_versions_accepted_on_preview(fin_simulator):
    sim = fin_simulator(reply_delay_ms=60_000)
    body = example("start_request", settings={"follow_up_questions": False})
    with client(sim, "2.14") as c:
        stable = c.post("/fin/start", json=body)
    with client(sim, "Preview") as c:
        preview = c.post("/fin/start", json=body)
    assert stable.status_code == 400
    assert _error(stable) == {
        "code": "parameter_invalid",
        "message": "Additional properties are not allowed ('settings' was unexpected)",
        "field": "settings",
    }
    assert preview.status_code == 200


def test_preview_capabilities_refuses_unknown_user_field(fin_simulator):
    sim = fin_simulator()
    with client(sim, "Preview") as c:
        response = c.post("/fin/capabilities", json={"user": {"id": "1", "extra": True}})
    assert response.status_code == 400
    assert _error(response)["field"] == "user.extra"


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"conversation_id": "ext-123", "rating": "meh"}, {"rating": "Rating isn't an option"}),
        ({"conversation_id": "ext-123"}, {"rating": "Rating isn't an option"}),
        ({"rating": "good"}, {"conversation_id": "conversation_id is required"}),
        (
            {"conversation_id": "ext-123", "rating": "good", "stars": 5},
            {"stars": "Additional properties are not allowed ('stars' was unexpected)"},
        ),
    ],
)
def test_invalid_csat_is_422_with_the_documented_body(fin_simulator, body, errors):
    sim = fin_simulator()
    with client(sim, "2.16") as c:
        response = c.post("/fin/csat", json=body)
    assert response.status_code == 422
    assert response.json() == {"errors": errors}


def test_2_17_message_needs_timestamp_or_timestamp_ms(fin_simulator):
    sim = fin_simulator(reply_delay_ms=60_000)
    untimed = example("start_request", conversation_id="u-1")
    del untimed["message"]["timestamp"]
    with_ms = example("start_request", conversation_id="u-2")
    with_ms["message"] = {**untimed["message"], "timestamp_ms": "2025-01-24T10:01:20.123Z"}
    with client(sim, "2.17") as c:
        refused = c.post("/fin/start", json=untimed)
        ms_only = c.post("/fin/start", json=with_ms)
        stamped = c.post("/fin/start", json=example("start_request", conversation_id="u-3"))
    with client(sim, "2.15") as c:
        stable = c.post("/fin/start", json={**with_ms, "conversation_id": "u-4"})
    assert refused.status_code == 422
    assert _error(refused) == {
        "code": "parameter_invalid",
        "message": "timestamp_ms is required",
        "field": "message.timestamp_ms",
    }
    assert ms_only.status_code == 200 and stamped.status_code == 200
    # 2.15's schema requires timestamp; timestamp_ms alone is not enough there.
    assert stable.status_code == 400
    assert _error(stable)["field"] == "message.timestamp"
    assert _error(stable)["message"] == "message.timestamp is required"


def test_2_17_history_takes_user_and_agent_only(fin_simulator):
    sim = fin_simulator(reply_delay_ms=60_000)
    body = example("start_request")
    body["conversation_metadata"]["history"][1]["author"] = "fin"
    with client(sim, "2.17") as c:
        refused = c.post("/fin/start", json=body)
    with client(sim, "2.16") as c:
        accepted = c.post("/fin/start", json=body)
    assert refused.status_code == 400
    assert _error(refused)["field"] == "conversation_metadata.history.1.author"
    assert accepted.status_code == 200


def test_escalate_needs_exactly_one_of_conversation_or_user(fin_simulator):
    sim = fin_simulator()
    with client(sim, "Preview") as c:
        neither = c.post("/fin/escalate", json={"context": "x"})
        both = c.post("/fin/escalate", json={"conversation_id": "c", "user": {"id": "1"}})
        too_long = c.post("/fin/escalate", json={"user": {"id": "1"}, "message": "x" * 10_001})
    assert _error(neither)["message"] == "Either conversation_id or user must be provided"
    assert both.status_code == 400
    assert _error(both)["message"] == "exactly one of 'conversation_id', 'user' is required"
    assert _error(too_long) == {
        "code": "parameter_invalid",
        "message": "too long: 10001 characters (at most 10000)",
        "field": "message",
    }


def test_request_log_keeps_bodies_and_raw_versions_for_revalidation(fin_simulator):
    sim = fin_simulator(reply_delay_ms=60_000)
    sent = []
    with client(sim) as c:
        for version, path, body in [
            (None, "/fin/start", example("start_request", conversation_id="l-1")),
            ("preview", "/fin/capabilities", example("capabilities_request")),
            ("2.16", "/fin/start", example("start_request", conversation_id="l-2")),
            ("Preview", "/fin/ask", example("ask_request", conversation_id="l-3")),
            ("2.14", "/fin/start", example("start_request", settings={"email": True})),
        ]:
            headers = {} if version is None else {"Intercom-Version": version}
            c.post(path, json=body, headers=headers)
            sent.append((version, body))
        c.post("/fin/start", content=b"{not json", headers={"Intercom-Version": "2.15"})
    log = sim.control.requests()
    assert [(e["version"], e["body"]) for e in log[:5]] == sent
    assert log[5]["body"] is None and log[5]["status"] == 400
    assert [e["api_version"] for e in log] == ["2.15", "Preview", "2.16", "Preview", "2.14", "2.15"]
    # An independent re-check of every recorded request against its version's schema.
    for entry in log[:5]:
        version = entry["version"] or sim.control.configure()["api_version_default"]
        errors = spec.request_errors(version, entry["endpoint"], entry["body"])
        assert (errors == []) is (entry["status"] == 200), (entry, errors)


def test_log_bodies_off(fin_simulator):
    sim = fin_simulator(log_bodies=False, reply_delay_ms=60_000)
    with client(sim) as c:
        assert c.post("/fin/start", json=example("start_request")).status_code == 200
    [entry] = sim.control.requests()
    assert entry["body"] is None and entry["conversation_id"] == "ext-123"
    sim.control.configure(log_bodies=True)
    with client(sim) as c:
        c.post("/fin/reply", json=example("reply_request"))
    assert sim.control.requests()[-1]["body"] == example("reply_request")

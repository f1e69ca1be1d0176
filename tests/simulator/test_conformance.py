"""Conformance over real HTTP with the spec's literal JSON examples (not our own models)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.simulator.helpers import client, example, with_message


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert body["type"] == "error.list"
    assert body["request_id"] == response.headers["x-request-id"]
    assert len(body["errors"]) == 1
    return body["errors"][0]


def test_start_example_accepted_and_response_shape(fin_simulator):
    sim = fin_simulator()
    with client(sim) as c:
        response = c.post("/fin/start", json=example("start_request"))
    assert response.status_code == 200
    body = response.json()
    documented = example("start_response")
    # Same keys as the documented example, minus the SSE URL (SSE is off by default).
    assert set(body) == set(documented) - {"sse_subscription_url"}
    assert body["conversation_id"] == "ext-123"
    assert body["status"] == "thinking"
    assert body["user_id"] == "123456"  # chosen: the caller's user.id
    assert len(body["created_at_ms"]) == len(documented["created_at_ms"])
    assert body["created_at_ms"].endswith("Z")


def test_sse_url_when_enabled_has_rewind_on_start_only(fin_simulator):
    sim = fin_simulator(sse=True, reply_delay_ms=0)
    with client(sim) as c:
        start = c.post("/fin/start", json=example("start_request"))
        sim.control.wait_for(lambda s: not s.conversation("ext-123")["busy"], 5)
        reply = c.post("/fin/reply", json=example("reply_request"))
    assert start.json()["sse_subscription_url"].endswith("&rewind=2m")
    assert "rewind" not in reply.json()["sse_subscription_url"]


def test_reply_example_accepted_after_turn(fin_simulator):
    sim = fin_simulator(reply_delay_ms=0)
    with client(sim) as c:
        assert c.post("/fin/start", json=example("start_request")).status_code == 200
        sim.control.wait_for(
            lambda s: s.conversation("ext-123")["status"] == "awaiting_user_reply", 5
        )
        response = c.post("/fin/reply", json=example("reply_request"))
    assert response.status_code == 200
    assert response.json()["status"] == "thinking"


def test_ask_capabilities_procedure_examples(fin_simulator):
    sim = fin_simulator()
    with client(sim, "Preview") as c:
        ask = c.post("/fin/ask", json=example("ask_request"))
        caps = c.post("/fin/capabilities", json=example("capabilities_request"))
        run = c.post("/fin/procedures/12345/run", json=example("procedure_run_request"))
        unknown = c.post(
            "/fin/procedures/999/run",
            json=example("procedure_run_request", conversation_id="ext-999"),
        )
    assert ask.status_code == 200 and ask.json()["status"] == "thinking"
    assert caps.status_code == 200
    documented = example("capabilities_response")
    assert caps.json()["version"] == "Preview"
    for item in documented["capabilities"]:
        assert item in caps.json()["capabilities"]
    assert run.status_code == 200
    assert run.json()["procedure_id"] == "12345"
    assert run.json()["conversation_id"] == "ext-125"
    assert unknown.status_code == 400
    assert _error(unknown)["message"] == "Procedure not found"


def test_escalate_examples(fin_simulator):
    sim = fin_simulator()
    with client(sim, "Preview") as c:
        c.post("/fin/start", json=example("start_request"))
        existing = c.post("/fin/escalate", json=example("escalate_request_conversation"))
        new = c.post("/fin/escalate", json=example("escalate_request_user"))
        unknown = c.post("/fin/escalate", json={"conversation_id": "nope"})
        neither = c.post("/fin/escalate", json={"context": "x"})
    assert existing.status_code == 200
    assert existing.json() == {"conversation_id": "ext-123", "status": "escalated"}
    assert new.status_code == 200
    assert set(new.json()) == set(example("escalate_response_new"))
    assert new.json()["status"] == "escalated"
    assert unknown.status_code == 400 and _error(unknown)["message"] == "Conversation not found"
    assert neither.status_code == 400
    assert _error(neither)["message"] == "Either conversation_id or user must be provided"


def test_401_exact_body_and_no_rate_limit_headers(fin_simulator):
    sim = fin_simulator()
    documented = example("error_401")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": sim.token}):
        response = httpx.post(
            sim.base_url + "/fin/start", json=example("start_request"), headers=headers
        )
        assert response.status_code == 401
        body = response.json()
        assert body["request_id"] == response.headers["x-request-id"]
        uuid.UUID(body["request_id"])
        assert {**body, "request_id": documented["request_id"]} == documented
        assert not any(h.startswith("x-ratelimit") for h in response.headers)


@pytest.mark.parametrize(
    ("mutate", "message", "field"),
    [
        (lambda b: b.pop("conversation_id"), "conversation_id is required", "conversation_id"),
        (lambda b: b.pop("user"), "user is required", "user"),
        (lambda b: b["message"].pop("body"), "message.body is required", "message.body"),
        (
            lambda b: b["conversation_metadata"].update(
                history=b["conversation_metadata"]["history"] * 6
            ),
            "Conversation history cannot contain more than 10 items",
            "conversation_metadata.history",
        ),
        (
            lambda b: b["user"].update(attributes={f"a{i}": i for i in range(11)}),
            "Cannot update more than 10 attributes at once.",
            "user.attributes",
        ),
        (
            lambda b: b.update(attachments=b["attachments"] * 6),
            "too many items: 12 (at most 10)",
            "attachments",
        ),
        (
            lambda b: b["attachments"][1].pop("data"),
            "attachments.1.data is required",
            "attachments.1.data",
        ),
        (
            lambda b: b["attachments"][1].update(data="iVBORw0KGgo..."),
            "'iVBORw0KGgo...' is not a 'byte'",
            "attachments.1.data",
        ),
        (
            lambda b: b["user"].update(email="john.doe"),
            "'john.doe' is not a 'email'",
            "user.email",
        ),
        (
            lambda b: b["message"].update(timestamp="2025-01-24 10:01:20"),
            "'2025-01-24 10:01:20' is not a 'date-time'",
            "message.timestamp",
        ),
        (
            lambda b: b["message"].update(author="bot"),
            "'bot' is not one of ['user', 'agent', 'fin']",
            "message.author",
        ),
        (
            lambda b: b.update(bogus=1),
            "Additional properties are not allowed ('bogus' was unexpected)",
            "bogus",
        ),
        (
            lambda b: b.update(settings={"email": True}),
            "Additional properties are not allowed ('settings' was unexpected)",
            "settings",
        ),
    ],
)
def test_400_parameter_invalid_names_the_field(fin_simulator, mutate, message, field):
    sim = fin_simulator()
    body = example("start_request")
    mutate(body)
    with client(sim) as c:
        response = c.post("/fin/start", json=body)
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "parameter_invalid"
    assert error["field"] == field
    if message is not None:
        assert error["message"] == message
    assert "x-ratelimit-remaining" in response.headers


def test_documented_error_example_shape(fin_simulator):
    sim = fin_simulator()
    body = example("start_request")
    del body["conversation_id"]
    with client(sim) as c:
        response = c.post("/fin/start", json=body)
    documented = example("error_400_conversation_id")
    got = response.json()
    assert got["errors"][0]["code"] == documented["errors"][0]["code"]
    assert got["errors"][0]["message"] == documented["errors"][0]["message"]


def test_ask_documented_messages(fin_simulator):
    sim = fin_simulator()
    with client(sim, "Preview") as c:
        no_id = c.post(
            "/fin/ask",
            json={k: v for k, v in example("ask_request").items() if k != "conversation_id"},
        )
        no_user = c.post("/fin/ask", json=example("ask_request", user={}))
    assert _error(no_id)["message"] == "External Conversation ID is required"
    assert _error(no_user)["message"] == "User ID is required"


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b""])
def test_400_for_non_json_body(fin_simulator, raw):
    sim = fin_simulator()
    with client(sim) as c:
        response = c.post("/fin/start", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert _error(response)["code"] == "parameter_invalid"


def test_version_handling(fin_simulator):
    sim = fin_simulator()
    documented = example("error_400_version")
    with client(sim) as c:
        old = c.post(
            "/fin/start", json=example("start_request"), headers={"Intercom-Version": "2.13"}
        )
        junk = c.post(
            "/fin/start", json=example("start_request"), headers={"Intercom-Version": "banana"}
        )
        preview = c.post(
            "/fin/capabilities",
            json=example("capabilities_request"),
            headers={"Intercom-Version": "preview"},
        )
        default = c.post("/fin/start", json=example("start_request"))
    assert old.status_code == 400
    assert _error(old)["code"] == documented["errors"][0]["code"]
    assert _error(junk)["message"] == documented["errors"][0]["message"]
    assert preview.status_code == 200 and preview.json()["version"] == "Preview"
    assert default.status_code == 200
    # Missing header = the app's default (2.15): the request log says which version answered.
    [logged] = [
        r for r in sim.control.requests() if r["path"] == "/fin/start" and r["status"] == 200
    ]
    assert logged["version"] is None and logged["api_version"] == "2.15"


def test_unknown_conversation_existing_session_and_busy(fin_simulator):
    sim = fin_simulator(reply_delay_ms=5_000)
    with client(sim) as c:
        unknown = c.post("/fin/reply", json=example("reply_request"))
        c.post("/fin/start", json=example("start_request"))
        again = c.post(
            "/fin/start",
            json=with_message(example("start_request"), timestamp="2025-01-24T10:05:00.000Z"),
        )
        busy = c.post("/fin/reply", json=example("reply_request"))
    assert unknown.status_code == 404
    assert _error(unknown) == {
        "code": "not_found",
        "message": "Conversation not found",
        "field": "conversation_id",
    }
    assert again.status_code == 400
    assert _error(again)["message"] == (
        "Fin session already exists for this conversation. Please use /reply to continue the conversation."
    )
    assert busy.status_code == 409 and _error(busy)["code"] == "conflict"


def test_timestamp_rules_by_version(fin_simulator):
    sim = fin_simulator()
    body = example("start_request")
    del body["message"]["timestamp"]
    with client(sim) as c:
        v215 = c.post("/fin/start", json=body, headers={"Intercom-Version": "2.15"})
        v217 = c.post("/fin/start", json=body, headers={"Intercom-Version": "2.17"})
        preview = c.post("/fin/start", json=body, headers={"Intercom-Version": "Preview"})
    assert v215.status_code == 400 and _error(v215)["field"] == "message.timestamp"
    assert v217.status_code == 422 and _error(v217)["message"] == "timestamp_ms is required"
    assert preview.status_code == 200


def test_unknown_path_and_method_are_404(fin_simulator):
    sim = fin_simulator()
    with client(sim) as c:
        path = c.post("/fin/nope", json={})
        method = c.get("/fin/start")
    for response in (path, method):
        assert response.status_code == 404
        assert _error(response)["code"] == "not_found"


def test_attribute_errors_are_non_fatal(fin_simulator):
    sim = fin_simulator()
    body = example("start_request")
    body["user"]["attributes"]["invalid_attr"] = 1
    body["conversation_metadata"]["attributes"]["bad_attr"] = 2
    with client(sim) as c:
        response = c.post("/fin/start", json=body)
    assert response.status_code == 200
    documented = example("attribute_errors")
    assert response.json()["errors"]["user"] == documented["user"]
    assert (
        response.json()["errors"]["conversation"]["attributes"]["bad_attr"]
        == (documented["conversation"]["attributes"]["bad_attr"])
    )


def test_a_request_whose_client_left_before_its_body_is_neither_answered_nor_logged():
    """A caller killed mid-request (the worker reliability tests SIGKILL workers mid-call)
    never finished sending: Fin never received it, so the simulator neither answers nor logs
    it (it used to parse the partial body and log a 400)."""
    import asyncio

    from fin_relay.simulator.app import SimulatorApp
    from fin_relay.simulator.config import SimulatorConfig

    app = SimulatorApp(SimulatorConfig())
    messages = [
        {"type": "http.request", "body": b'{"conversation_id": "c1", "mess', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/fin/start",
        "headers": [(b"authorization", b"Bearer sim-token"), (b"content-length", b"100")],
    }
    asyncio.run(app(scope, receive, send))
    assert sent == [] and list(app.requests) == []

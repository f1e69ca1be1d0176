"""Every event the simulator sends validates against its version's event schema (real HTTP,
real receiver), except the documented deviations and the deliberately unknown on-demand kinds."""

from __future__ import annotations

import httpx
import pytest

from fin_relay.simulator import spec
from tests.fixtures.simulator import verify_signature
from tests.simulator.helpers import client, example, with_message

SECRET = "whsec-schemas"
#: On-demand kinds that are meant to fail every schema (receivers must cope with them).
UNKNOWN_KINDS = ("unknown_status", "unknown_event")


def _undocumented_errors(version, event):
    """``event_errors`` minus the errors a documented deviation excuses."""
    return [
        error
        for error in spec.event_errors(version, event)
        if not any(d.excuses(version, event, error) for d in spec.DOCUMENTED_DEVIATIONS)
    ]


def _start(c, conversation_id, text="How can I see my account details?"):
    body = with_message(example("start_request", conversation_id=conversation_id), body=text)
    response = c.post("/fin/start", json=body)
    assert response.status_code == 200, response.text
    return response


def _has_status(receiver, conversation_id, status):
    """A ``fin_status_updated`` with ``status`` arrived for the conversation."""
    return any(
        e["event_name"] == "fin_status_updated" and e["status"] == status
        for e in receiver.events(conversation_id)
    )


def test_scripted_events_validate_against_their_version(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET, reply_delay_ms=0)
    version_of = {}
    for version in spec.VERSIONS:
        tag = version.replace(".", "")
        turn, escalation = f"turn-{tag}", f"human-{tag}"
        version_of |= {turn: version, escalation: version}
        with client(sim, version) as c:
            _start(c, turn)
            _start(c, escalation, "Can I talk to a human?")
            webhook_receiver.wait_for(
                lambda t=turn: _has_status(webhook_receiver, t, "awaiting_user_reply")
            )
            sim.control.wait_for(lambda s, t=turn: s.conversation(t)["busy"] is False)
            reply = with_message(
                example("reply_request", conversation_id=turn),
                body="Thanks, that solved it",
                timestamp="2025-01-24T10:09:00.000Z",
            )
            assert c.post("/fin/reply", json=reply).status_code == 200
    with client(sim, "Preview") as c:
        version_of |= {"ask-1": "Preview", "run-1": "Preview", "api-esc": "Preview"}
        assert (
            c.post("/fin/ask", json=example("ask_request", conversation_id="ask-1")).status_code
            == 200
        )
        run = example("procedure_run_request", conversation_id="run-1")
        assert c.post("/fin/procedures/12345/run", json=run).status_code == 200
        _start(c, "api-esc")
        webhook_receiver.wait_for(
            lambda: _has_status(webhook_receiver, "api-esc", "awaiting_user_reply")
        )
        escalate = {"conversation_id": "api-esc", "context": "refund"}
        assert c.post("/fin/escalate", json=escalate).status_code == 200

    # Wait for each conversation's last scripted event.
    last = {"turn": ("csat_requested", None), "human": ("fin_status_updated", "complete"),
            "ask": ("fin_status_updated", "complete"), "api": ("fin_status_updated", "complete"),
            "run": ("fin_status_updated", "awaiting_user_reply")}  # fmt: skip
    for cid in version_of:
        name, status = last[cid.split("-")[0]]
        webhook_receiver.wait_for(
            lambda cid=cid, name=name, status=status: any(
                e["event_name"] == name and e.get("status") == status
                for e in webhook_receiver.events(cid)
            )
        )

    excused = set()
    checked = 0
    for post in webhook_receiver.posts():
        assert verify_signature(SECRET, post.body, post.signature)
        event = post.json()
        version = version_of[event["conversation_id"]]
        assert _undocumented_errors(version, event) == [], (version, event)
        if spec.event_errors(version, event):
            excused.add((version, event["event_name"], event["status"]))
        checked += 1
    # The exception list is used, and only where documented.
    assert excused == {
        ("2.14", "fin_status_updated", "awaiting_user_reply"),
        ("2.15", "fin_status_updated", "awaiting_user_reply"),
    }
    names = {post.json()["event_name"] for post in webhook_receiver.posts()}
    assert names == {"fin_replied", "fin_status_updated", "csat_requested"}
    # Per version: a turn (2), a resolution (3), an escalation (3); then ask, run, API escalation.
    assert checked == 5 * 8 + 2 + 2 + 4


def _kinds_for(version):
    kinds = ["extra_fields", *UNKNOWN_KINDS]
    if version == "2.17":
        kinds += ["thinking", "complete_reply"]
    if version != "2.17":
        kinds.append("reply_chunk")
    return kinds


@pytest.mark.parametrize("version", spec.VERSIONS)
def test_on_demand_events_validate_except_the_unknown_kinds(
    fin_simulator, webhook_receiver, version
):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET, reply_delay_ms=60_000)
    with client(sim, version) as c:
        _start(c, "od-1")
    kinds = _kinds_for(version)
    sent = {kind: sim.control.send_events("od-1", kind=kind) for kind in kinds}
    events = webhook_receiver.wait_for_events(len(kinds), "od-1")
    assert [e for batch in sent.values() for e in batch] == events  # as queued, in order
    for post in webhook_receiver.posts():
        assert verify_signature(SECRET, post.body, post.signature)
    for kind, [event] in sent.items():
        errors = spec.event_errors(version, event)
        if kind in UNKNOWN_KINDS:
            assert errors, (kind, event)
            assert not any(
                d.excuses(version, event, e) for d in spec.DOCUMENTED_DEVIATIONS for e in errors
            )
        else:
            assert errors == [], (kind, event)
    # Open by default, but the extra fields really are undocumented.
    assert len(spec.event_errors(version, sent["extra_fields"][0], closed=True)) == 2


def test_on_demand_event_shapes(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET, reply_delay_ms=60_000)
    with client(sim, "2.17") as c:
        _start(c, "od-2")
    status = sim.control.send_events("od-2", kind="unknown_status")[0]
    unknown = sim.control.send_events("od-2", kind="unknown_event")[0]
    thinking = sim.control.send_events("od-2", kind="thinking")[0]
    complete = sim.control.send_events("od-2", kind="complete_reply")[0]
    chunk = sim.control.send_events("od-2", kind="reply_chunk")[0]
    extra = sim.control.send_events("od-2", kind="extra_fields")[0]
    assert status["event_name"] == "fin_status_updated" and status["status"] == "pondering"
    assert not any(status["status"] in (spec.closed_event_schema(v, "fin_status_updated")["properties"]["status"]["enum"]) for v in spec.VERSIONS)  # fmt: skip
    assert unknown["event_name"] not in {"fin_status_updated", "fin_replied", "fin_reply_chunk", "csat_requested"}  # fmt: skip
    assert {"conversation_id", "user_id", "created_at_ms"} < set(unknown)
    assert len(set(unknown) - {"event_name", "conversation_id", "user_id", "created_at_ms"}) >= 1
    assert thinking["status"] == "thinking"
    assert complete["status"] == "complete" and complete["message"]["format"] == "html"
    assert isinstance(complete["message"]["sources"], list) and complete["message"]["sources"]
    assert (chunk["chunk_index"], chunk["status"]) == (0, "replying") and "user_id" not in chunk
    assert chunk["stream_id"] and chunk["chunk_text"]
    assert spec.event_errors("2.16", chunk) == []
    assert spec.event_errors("2.17", chunk) != []  # no fin_reply_chunk in 2.17
    assert set(extra) - set(spec.closed_event_schema("2.17", "fin_replied")["properties"])
    stamps = [e["created_at_ms"] for e in (status, unknown, thinking, complete, chunk, extra)]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert len(webhook_receiver.wait_for_events(6, "od-2")) == 6


def test_raw_events_sent_as_given_and_errors(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET, reply_delay_ms=60_000)
    with client(sim, "2.15") as c:
        _start(c, "raw-1")
    raw = [{"conversation_id": "raw-1", "note": "settings-page test without event_name"}]
    assert sim.control.send_events("raw-1", events=raw) == raw
    [post] = webhook_receiver.wait_for(lambda: webhook_receiver.posts())
    assert post.json() == raw[0]
    assert verify_signature(SECRET, post.body, post.signature)
    with pytest.raises(httpx.HTTPStatusError) as missing:
        sim.control.send_events("nope", kind="thinking")
    assert missing.value.response.status_code == 404
    url = f"{sim.base_url}/_sim/conversations/raw-1/events"
    assert httpx.post(url, json={"kind": "dancing"}).status_code == 400
    assert httpx.post(url, json={"kind": "thinking", "events": []}).status_code == 400
    assert httpx.post(url, json={"events": ["not an object"]}).status_code == 400
    assert httpx.get(url).status_code == 404
    with pytest.raises(ValueError):
        sim.control.send_events("raw-1")

"""Webhook sequences received by a real HTTP receiver; signatures checked independently."""

from __future__ import annotations

import json

import pytest

from fin_relay.contract.fin_api import parse_fin_time
from tests.fixtures.simulator import verify_signature
from tests.simulator.helpers import client, example, with_message

SECRET = "whsec-test-1"


def _assert_signed(receiver, secret=SECRET):
    posts = receiver.posts()
    assert posts
    for post in posts:
        assert verify_signature(secret, post.body, post.signature)
        assert len(post.signature) == len("sha256=") + 64
        assert post.signature == post.signature.lower()
        assert post.headers.get("Content-Type") == "application/json"


def _names(events):
    return [
        (e["event_name"], e["status"]) if "status" in e else (e["event_name"], None) for e in events
    ]


def _start(sim, version=None, text=None, conversation_id="ext-123", user_id="123456"):
    body = example("start_request", conversation_id=conversation_id)
    body["user"]["id"] = user_id
    if text is not None:
        body = with_message(body, body=text)
    with client(sim, version) as c:
        response = c.post("/fin/start", json=body)
    assert response.status_code == 200
    return response


def test_normal_turn_2_15(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET)
    _start(sim, user_id="u-77")
    events = webhook_receiver.wait_for_events(2)
    assert _names(events) == [
        ("fin_replied", "awaiting_user_reply"),
        ("fin_status_updated", "awaiting_user_reply"),
    ]
    assert all(e["user_id"] == "u-77" for e in events)
    assert events[0]["message"]["author"] == "fin"
    assert events[0]["message"]["id"]
    _assert_signed(webhook_receiver)
    # Keys match the documented examples (minus the streaming-only stream_id).
    assert set(events[0]) == set(example("event_fin_replied")) - {"stream_id"}
    assert set(events[1]) == set(example("event_fin_status_updated")) - {"reason"}


@pytest.mark.parametrize("version", ["2.16", "Preview"])
def test_replying_parts_from_2_16(fin_simulator, webhook_receiver, version):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET, reply_parts=2)
    _start(sim, version=version)
    events = webhook_receiver.wait_for_events(3)
    assert _names(events) == [
        ("fin_replied", "replying"),
        ("fin_replied", "replying"),
        ("fin_status_updated", "awaiting_user_reply"),
    ]
    ids = [e["message"]["id"] for e in events[:2]]
    assert len(set(ids)) == 2
    times = [parse_fin_time(e["created_at_ms"]) for e in events]
    assert times == sorted(times) and len(set(times)) == 3


def test_escalation_keyword(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET)
    _start(sim, text="Can I talk to a HUMAN please?")
    events = webhook_receiver.wait_for_events(3)
    assert _names(events) == [
        ("fin_replied", "awaiting_user_reply"),
        ("fin_status_updated", "escalated"),
        ("fin_status_updated", "complete"),
    ]
    assert events[1]["reason"] == "Escalation requested by user"
    _assert_signed(webhook_receiver)


def test_thanks_resolves_and_requests_csat(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET)
    _start(sim, text="Thanks, that solved it")
    events = webhook_receiver.wait_for_events(3)
    assert _names(events) == [
        ("fin_status_updated", "resolved"),
        ("fin_status_updated", "complete"),
        ("csat_requested", None),
    ]
    assert {o["key"] for o in events[2]["csat"]["options"]} == {
        "terrible",
        "bad",
        "ok",
        "good",
        "amazing",
    }
    assert set(events[2]) == set(example("event_csat_requested"))


def test_api_escalation_and_ask(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET, reply_delay_ms=60_000)
    _start(sim)
    with client(sim, "Preview") as c:
        assert (
            c.post("/fin/escalate", json=example("escalate_request_conversation")).status_code
            == 200
        )
        assert c.post("/fin/ask", json=example("ask_request")).status_code == 200
    sim.control.configure(reply_delay_ms=0)
    escalation = webhook_receiver.wait_for_events(2, "ext-123")
    assert _names(escalation) == [
        ("fin_status_updated", "escalated"),
        ("fin_status_updated", "complete"),
    ]
    assert escalation[0]["reason"] == "Escalation requested via API"
    # The pending start turn was cancelled by the escalation: nothing else for ext-123.
    assert sim.control.conversation("ext-123")["busy"] is False


def test_ask_ends_with_complete(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET)
    with client(sim, "Preview") as c:
        assert c.post("/fin/ask", json=example("ask_request")).status_code == 200
    events = webhook_receiver.wait_for_events(2, "ext-124")
    # No awaiting_user_reply cycle: one answer, then complete.
    assert _names(events) == [("fin_replied", "replying"), ("fin_status_updated", "complete")]


def test_tampered_or_unsigned_body_is_detected(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET)
    _start(sim)
    webhook_receiver.wait_for_events(2)
    post = webhook_receiver.posts()[0]
    assert verify_signature(SECRET, post.body, post.signature)
    tampered = post.body.replace(b"ext-123", b"ext-124")
    assert tampered != post.body
    assert not verify_signature(SECRET, tampered, post.signature)
    # Re-serialising the parsed JSON differently also fails: verify raw bytes only.
    assert not verify_signature(SECRET, json.dumps(post.json(), indent=1).encode(), post.signature)
    assert not verify_signature("other-secret", post.body, post.signature)
    assert not verify_signature(SECRET, post.body, None)


def test_retries_until_receiver_recovers(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET)
    webhook_receiver.fail_next(2, status=503)
    _start(sim)
    webhook_receiver.wait_for(lambda: len(webhook_receiver.posts()) >= 4)
    posts = webhook_receiver.posts()
    # The first event was tried 3 times (byte-identical, same signature), then the second once.
    assert posts[0].body == posts[1].body == posts[2].body
    assert posts[0].signature == posts[2].signature
    assert json.loads(posts[3].body)["event_name"] == "fin_status_updated"
    log = sim.control.wait_for(lambda s: len(s.webhooks()) >= 4 and s.webhooks())
    assert [(d["attempt"], d["status"], d["ok"]) for d in log[:4]] == [
        (1, 503, False),
        (2, 503, False),
        (3, 200, True),
        (1, 200, True),
    ]


def test_gives_up_after_max_attempts(fin_simulator):
    # Nothing listens on this port: every attempt fails to connect.
    sim = fin_simulator(
        callback_url="http://127.0.0.1:9/hooks", webhook_attempts=2, reply_delay_ms=0
    )
    _start(sim)
    log = sim.control.wait_for(lambda s: len(s.webhooks()) >= 4 and s.webhooks())
    assert [d["attempt"] for d in log] == [1, 2, 1, 2]
    assert not any(d["ok"] for d in log)
    assert all(d["error"] for d in log)


def test_duplicate_switch(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET, webhook_duplicate=True)
    _start(sim)
    webhook_receiver.wait_for(lambda: len(webhook_receiver.posts()) >= 4)
    bodies = [p.body for p in webhook_receiver.posts()]
    assert bodies[0] == bodies[1] and bodies[2] == bodies[3] and bodies[0] != bodies[2]
    _assert_signed(webhook_receiver)


def test_out_of_order_switch(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET, webhook_out_of_order=True)
    _start(sim)
    events = webhook_receiver.wait_for_events(2)
    assert [e["event_name"] for e in events] == ["fin_status_updated", "fin_replied"]
    # created_at_ms still says the true order.
    assert parse_fin_time(events[0]["created_at_ms"]) > parse_fin_time(events[1]["created_at_ms"])


def test_head_probe_switch(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET, webhook_head_probe=True)
    _start(sim)
    webhook_receiver.wait_for_events(2)
    _start(sim, conversation_id="ext-2")
    webhook_receiver.wait_for_events(2, "ext-2")
    methods = [r.method for r in webhook_receiver.received]
    assert methods[0] == "HEAD"
    assert methods.count("HEAD") == 1  # once per callback URL


def test_events_of_many_conversations_all_delivered_in_order(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET, reply_delay_ms=50)
    ids = [f"c-{i}" for i in range(20)]
    for cid in ids:
        _start(sim, conversation_id=cid)
    webhook_receiver.wait_for(lambda: len(webhook_receiver.posts()) >= 40)
    for cid in ids:
        assert _names(webhook_receiver.events(cid)) == [
            ("fin_replied", "awaiting_user_reply"),
            ("fin_status_updated", "awaiting_user_reply"),
        ]
    message_ids = [e["message"]["id"] for e in webhook_receiver.events() if "message" in e]
    assert len(message_ids) == len(set(message_ids)) == 20
    _assert_signed(webhook_receiver)


def test_slow_receiver_times_out_and_is_retried(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, secret=SECRET, webhook_timeout_s=0.2)
    webhook_receiver.hang_next(1, 1.0)
    _start(sim)
    log = sim.control.wait_for(lambda s: len(s.webhooks()) >= 3 and s.webhooks())
    assert (log[0]["attempt"], log[0]["error"], log[0]["ok"]) == (1, "timeout", False)
    assert (log[1]["attempt"], log[1]["ok"]) == (2, True)
    assert log[0]["event_name"] == log[1]["event_name"] == "fin_replied"
    stats = sim.control.webhook_state()
    assert stats["failed_attempts"] == 1 and stats["attempts"] == 3

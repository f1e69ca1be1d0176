"""De-duplication by message timestamp, CSAT idempotency, and the request log."""

from __future__ import annotations

from tests.simulator.helpers import client, example, with_message


def test_duplicate_start_and_reply_are_deduplicated(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, reply_delay_ms=0)
    with client(sim) as c:
        first = c.post("/fin/start", json=example("start_request"))
        webhook_receiver.wait_for_events(2)
        retry = c.post("/fin/start", json=example("start_request"))
        # The same instant written differently, in timestamp_ms (which wins over a different
        # timestamp): still the same message.
        retry_ms = c.post(
            "/fin/start",
            json=with_message(
                example("start_request"),
                timestamp="2025-01-24T10:05:00.000Z",
                timestamp_ms="2025-01-24T11:01:20+01:00",
            ),
        )
        reply = c.post("/fin/reply", json=example("reply_request"))
        webhook_receiver.wait_for_events(4)
        reply_again = c.post("/fin/reply", json=example("reply_request"))
    assert first.status_code == retry.status_code == retry_ms.status_code == 200
    assert retry.json()["status"] == "awaiting_user_reply"  # the current status, no new turn
    assert reply.status_code == reply_again.status_code == 200
    log = sim.control.requests()
    assert [e["deduplicated"] for e in log] == [False, True, True, False, True]
    assert [e["message_timestamp"] for e in log][:2] == ["2025-01-24T10:01:20.000Z"] * 2
    assert all(e["conversation_id"] == "ext-123" for e in log)
    # Only two turns worth of events were produced.
    state = sim.control.webhook_state()
    assert state["generated"] == 4
    assert len(webhook_receiver.events()) == 4


def test_busy_reply_does_not_burn_the_timestamp(fin_simulator):
    sim = fin_simulator(reply_delay_ms=60_000)
    with client(sim) as c:
        c.post("/fin/start", json=example("start_request"))
        busy = c.post("/fin/reply", json=example("reply_request"))
        sim.control.configure(reply_delay_ms=0)
        escalated = c.post(
            "/fin/escalate",
            json={"conversation_id": "ext-123"},
            headers={"Intercom-Version": "Preview"},
        )
        later = c.post("/fin/reply", json=example("reply_request"))
    assert busy.status_code == 409
    assert escalated.status_code == 200
    assert later.status_code == 200 and later.json()["status"] == "thinking"
    assert sim.control.requests()[-1]["deduplicated"] is False


def test_csat_flow_and_idempotency(fin_simulator, webhook_receiver):
    sim = fin_simulator(callback_url=webhook_receiver.url, reply_delay_ms=0)
    with client(sim) as c:
        not_found = c.post("/fin/csat", json=example("csat_request"))
        c.post("/fin/start", json=example("start_request"))
        no_survey = c.post("/fin/csat", json=example("csat_request"))
        webhook_receiver.wait_for_events(2)
        c.post("/fin/reply", json=with_message(example("reply_request"), body="Thank you!"))
        webhook_receiver.wait_for(
            lambda: any(e["event_name"] == "csat_requested" for e in webhook_receiver.events())
        )
        good = c.post("/fin/csat", json={"conversation_id": "ext-123", "rating": "good"})
        good_again = c.post("/fin/csat", json={"conversation_id": "ext-123", "rating": "good"})
        changed = c.post("/fin/csat", json={"conversation_id": "ext-123", "rating": "amazing"})
        remark = c.post("/fin/csat", json=example("csat_request"))
        same_retry = c.post("/fin/csat", json=example("csat_request"))
        rating_only_retry = c.post(
            "/fin/csat", json={"conversation_id": "ext-123", "rating": "amazing"}
        )
        locked = c.post("/fin/csat", json={"conversation_id": "ext-123", "rating": "bad"})
        bad_rating = c.post("/fin/csat", json={"conversation_id": "ext-123", "rating": "meh"})
        sim.control.configure(csat_window_s=0)
        closed = c.post("/fin/csat", json={"conversation_id": "ext-123", "rating": "amazing"})
    assert not_found.status_code == 422 and not_found.json() == example("csat_422_not_found")
    assert no_survey.status_code == 422 and no_survey.json() == example("csat_422_no_survey")
    for response in (good, good_again, changed, remark, same_retry, rating_only_retry):
        assert response.status_code == 200
    assert remark.json() == example("csat_response")
    assert locked.status_code == 422 and locked.json() == example("csat_422_locked")
    assert bad_rating.status_code == 422 and bad_rating.json() == example("csat_422_rating")
    assert closed.status_code == 422 and closed.json() == example("csat_422_window_closed")
    state = sim.control.conversation("ext-123")
    assert state["rating"] == "amazing" and state["remark"] == "optional text"


def test_iso_ms_matches_the_contract_formatter():
    import random
    from datetime import UTC, datetime

    from fin_relay.contract.fin_api import format_fin_time
    from fin_relay.simulator.state import iso_ms

    rng = random.Random(3)
    for at_ms in [0, 1737712800123, *(rng.randrange(0, 4 * 10**12) for _ in range(2000))]:
        assert iso_ms(at_ms) == format_fin_time(datetime.fromtimestamp(at_ms / 1000, tz=UTC))

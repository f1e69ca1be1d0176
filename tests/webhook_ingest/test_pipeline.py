"""Integration: simulator → signed webhooks → ingest → worker → ``{ns}:events``, over real HTTP
with real Redis and a real worker: every event of a scripted conversation arrives once, in
order, with the published envelope of the wire contract."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from fin_relay.contract.fin_api import parse_fin_time
from tests.fixtures.ingest import TEST_SECRET
from tests.fixtures.worker import enqueue_job, start_kwargs, wait_for_result, wait_until

pytestmark = pytest.mark.integration


def test_scripted_conversation_events_arrive_once_with_the_envelope(
    redis_url: str,
    redis_client: redis.Redis,
    fin_simulator: Any,
    start_ingest: Any,
    celery_worker_proc: Any,
) -> None:
    ingest = start_ingest(redis_url)
    sim = fin_simulator(
        callback_url=ingest.webhook_url,
        secret=TEST_SECRET,
        webhook_duplicate=True,
        reply_delay_ms=100,
    )
    celery_worker_proc(base_url=sim.base_url, concurrency=4)
    job = enqueue_job(redis_client, "fin.start", start_kwargs("pipe-1", body="Thanks, solved!"))
    assert wait_for_result(redis_client, job).type == "call.succeeded"

    # resolved, complete, csat_requested — each delivered twice by the simulator
    def delivered() -> list[dict[str, Any]] | None:
        ok = [d for d in sim.control.webhooks() if d["ok"]]
        return ok if len(ok) >= 6 else None

    deliveries = wait_until(delivered, 20, "six successful webhook deliveries")
    entries = wait_until(
        lambda: redis_client.xrange("fin:events") if redis_client.xlen("fin:events") >= 3 else None,
        20,
        "three events",
    )
    assert redis_client.xlen("fin:events") == 3  # duplicates were not published again
    # Workers process fin.event tasks concurrently: the stream's order is not Fin's order, so
    # compare in Fin's own order (created_at_ms).
    entries.sort(key=lambda entry: json.loads(entry[1]["envelope"])["data"]["created_at_ms"])
    envelopes = [json.loads(fields["envelope"]) for _id, fields in entries]
    assert (
        [e["type"] for e in envelopes]
        == [f["type"] for _id, f in entries]
        == ["fin_status_updated", "fin_status_updated", "csat_requested"]
    )
    assert [e["data"].get("status") for e in envelopes[:2]] == ["resolved", "complete"]
    for envelope, (_id, fields) in zip(envelopes, entries, strict=True):
        assert set(envelope) == {"id", "type", "conversation_id", "occurred_at", "data"}
        assert envelope["conversation_id"] == fields["conversation_id"] == "pipe-1"
        assert envelope["data"]["event_name"] == envelope["type"]
        parse_fin_time(envelope["occurred_at"])
    assert len({e["id"] for e in envelopes}) == 3
    assert {d["event_name"] for d in deliveries} == {"fin_status_updated", "csat_requested"}

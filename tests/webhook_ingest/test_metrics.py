"""``GET /metrics`` on the real ingest: webhook counts by status, dedup hits, queue depth."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx

from tests.fixtures.ingest import IngestServer


def _value(text: str, metric: str) -> float:
    match = re.search(rf"^{re.escape(metric)} ([0-9.e+]+)$", text, re.M)
    assert match, f"{metric} not in exposition"
    return float(match.group(1))


def test_metrics_count_webhooks_and_duplicates(ingest_server: IngestServer) -> None:
    with httpx.Client(timeout=5) as client:
        body = json.dumps(
            {
                "event_name": "fin_status_updated",
                "conversation_id": "m1",
                "user_id": "u",
                "status": "complete",
                "created_at_ms": _now_iso(),
            }
        ).encode()
        first = client.post(
            ingest_server.webhook_url, content=body, headers=ingest_server.headers(body)
        )
        again = client.post(
            ingest_server.webhook_url, content=body, headers=ingest_server.headers(body)
        )
        bad = client.post(
            ingest_server.webhook_url,
            content=body,
            headers={
                "content-type": "application/json",
                "x-fin-agent-api-webhook-signature": "sha256=00",
            },
        )
        assert (first.status_code, again.status_code, bad.status_code) == (202, 200, 401)
        text = client.get(f"{ingest_server.url}/metrics").text
    assert _value(text, 'fin_relay_webhooks_total{status="202"}') == 1
    assert _value(text, 'fin_relay_webhooks_total{status="200"}') == 1
    assert _value(text, 'fin_relay_webhooks_total{status="401"}') == 1
    assert _value(text, "fin_relay_dedup_hits_total") == 1
    assert _value(text, 'fin_relay_queue_depth{queue="fin.events"}') == 1


def test_metrics_add_up_across_server_processes(
    start_ingest: Callable[..., IngestServer], redis_url: str
) -> None:
    server = start_ingest(redis_url, workers=2)
    with httpx.Client(timeout=5) as client:
        for i in range(20):  # new connection each: spread over both processes
            body = json.dumps(
                {
                    "event_name": "fin_status_updated",
                    "conversation_id": f"p{i}",
                    "user_id": "u",
                    "status": "complete",
                    "created_at_ms": _now_iso(),
                }
            ).encode()
            resp = httpx.post(server.webhook_url, content=body, headers=server.headers(body))
            assert resp.status_code == 202
        text = client.get(f"{server.url}/metrics").text
    assert _value(text, 'fin_relay_webhooks_total{status="202"}') == 20


def _now_iso() -> Any:
    from datetime import UTC, datetime

    from fin_relay.contract.fin_api import format_fin_time

    return format_fin_time(datetime.now(UTC))

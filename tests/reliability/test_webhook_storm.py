"""Webhook storm: 5,000 signed deliveries (4,000 events + 1,000 duplicates), shuffled and
concurrent, through the real ingest over HTTP while a real worker drains ``fin.events``:
exactly 4,000 entries on ``{ns}:events`` (entries counted, not distinct ids).

Duplicates are Fin redeliveries: 600 byte-identical, 400 re-serialised (other key order and
spacing, signed again) — the ingest de-duplicates by the event's fields, not its bytes. Sent
directly by a signed sender (the simulator's ``webhook_duplicate`` switch duplicates *every*
event, so it cannot make a 20% mix).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from tests.fixtures.ingest import IngestServer, sign_body
from tests.reliability.helpers import (
    NS,
    broker_drained,
    event_id_of,
    fin_replied,
    now_iso,
    report,
    stream_ids,
    wait_for,
)

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

UNIQUE = 4000
DUPLICATES = 1000
CONCURRENCY = 32
UNUSED_FIN_URL = "http://127.0.0.1:9"  # fin.event tasks never call Fin


def status_event(i: int) -> dict[str, Any]:
    return {
        "event_name": "fin_status_updated",
        "conversation_id": f"storm-s-{i}",
        "user_id": "user-1",
        "status": "awaiting_user_reply",
        "created_at_ms": now_iso(),
    }


def build_deliveries(rng: random.Random) -> list[tuple[bytes, str]]:
    """(body, signature) of every delivery, shuffled: each unique event once, plus duplicates."""
    events = [
        fin_replied(f"storm-r-{i}", f"storm-m-{i}") if i % 2 else status_event(i)
        for i in range(UNIQUE)
    ]
    deliveries = [json.dumps(e, separators=(",", ":")).encode() for e in events]
    for n, i in enumerate(rng.sample(range(UNIQUE), DUPLICATES)):
        if n < 600:
            deliveries.append(deliveries[i])  # byte-identical redelivery
        else:
            reordered = dict(reversed(list(events[i].items())))
            deliveries.append(json.dumps(reordered, indent=1).encode())
    rng.shuffle(deliveries)
    return [(body, sign_body(body)) for body in deliveries]


async def send_all(url: str, deliveries: list[tuple[bytes, str]]) -> list[int]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(body: bytes, signature: str) -> int:
            headers = {
                "content-type": "application/json",
                "x-fin-agent-api-webhook-signature": signature,
            }
            async with sem:
                response = await client.post(url, content=body, headers=headers)
                return response.status_code

        return await asyncio.gather(*(one(b, s) for b, s in deliveries))


def test_storm_with_20_percent_duplicates_publishes_each_event_once(
    redis_url: str,
    redis_client: redis.Redis,
    start_ingest: Callable[..., IngestServer],
    worker_procs: Callable[..., Any],
) -> None:
    ingest = start_ingest(redis_url)
    worker_procs(redis_url, base_url=UNUSED_FIN_URL, concurrency=8)
    deliveries = build_deliveries(random.Random(5000))
    assert len(deliveries) == UNIQUE + DUPLICATES

    statuses = Counter(asyncio.run(send_all(ingest.webhook_url, deliveries)))
    wait_for(
        lambda: redis_client.xlen(NS.events) >= UNIQUE and broker_drained(redis_client),
        180,
        f"{UNIQUE} events published and the queue drained",
        step_s=0.5,
    )
    entries = redis_client.xlen(NS.events)
    ids = stream_ids(redis_client, NS.events)
    report(
        "test_webhook_storm::test_storm_with_20_percent_duplicates_publishes_each_event_once",
        deliveries=len(deliveries),
        statuses=dict(statuses),
        stream_entries=entries,
        distinct_ids=len(set(ids)),
        dead=redis_client.xlen(NS.dead),
    )
    assert statuses == {202: UNIQUE, 200: DUPLICATES}
    assert entries == UNIQUE  # entries, not distinct ids
    assert len(ids) == UNIQUE and len(set(ids)) == UNIQUE
    assert {event_id_of(f"storm-m-{i}") for i in range(1, UNIQUE, 2)} <= set(ids)
    assert redis_client.xlen(NS.dead) == 0

"""A real Celery worker accepts what the ingest enqueues (Lua path and kombu path)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fin_relay.contract.fin_api import format_fin_time
from fin_relay.contract.names import Names
from fin_relay.webhook_ingest.enqueue import redis_client as async_redis
from fin_relay.webhook_ingest.kombu_enqueue import KombuEnqueuer
from tests.fixtures.ingest import IngestServer
from tests.webhook_ingest.celery_stub import RECEIVED_KEY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stub_worker(redis_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "celery.log").open("wb")
    env = {**os.environ, "STUB_BROKER_URL": redis_url, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.webhook_ingest.celery_stub",
            "worker",
            "-P",
            "solo",
            "-Q",
            "fin.events",
            "-l",
            "warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    log.close()


def wait_received(client: redis.Redis, count: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.llen(RECEIVED_KEY) >= count:
            break
        time.sleep(0.1)
    return [json.loads(item) for item in client.lrange(RECEIVED_KEY, 0, -1)]


def test_celery_worker_runs_fin_event_with_the_contract_kwargs(
    ingest_server: IngestServer,
    stub_worker: subprocess.Popen[bytes],
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    bodies = [
        json.dumps(
            {
                "event_name": "fin_status_updated",
                "conversation_id": f"c{i}",
                "user_id": "u",
                "status": "complete",
                "created_at_ms": format_fin_time(datetime.now(UTC)),
                "reason": "ünïcode ✓",
            }
        ).encode()
        for i in range(3)
    ]
    with httpx.Client(timeout=15) as http:
        for body in bodies:
            r = http.post(
                ingest_server.webhook_url, content=body, headers=ingest_server.headers(body)
            )
            assert r.status_code == 202

    # The kombu path (used for non-Redis brokers), exercised here with kombu's Redis transport.
    async def kombu_publish() -> list[bool]:
        enqueuer = KombuEnqueuer(
            async_redis(redis_url, 2.0), Names("fin"), redis_url, ttl_s=3600, timeout_s=5.0
        )
        try:
            text = '{"event_name":"via_kombu","conversation_id":"k"}'
            return [
                await enqueuer.enqueue("kombu-1", text, 42),
                await enqueuer.enqueue("kombu-1", text, 42),
            ]
        finally:
            await enqueuer.aclose()

    assert asyncio.run(kombu_publish()) == [True, False]
    assert redis_client.get("fin:dedup:kombu-1") == "1"

    received = wait_received(redis_client, 4)
    assert len(received) == 4, received
    by_conversation = {r["event"]["conversation_id"]: r for r in received}
    for i, body in enumerate(bodies):
        got = by_conversation[f"c{i}"]
        assert set(got) == {"event", "event_id", "received_at_ms"}
        assert got["event"] == json.loads(body)
        assert got["event_id"].startswith("evt_") and isinstance(got["received_at_ms"], int)
    assert by_conversation["k"] == {
        "event": {"event_name": "via_kombu", "conversation_id": "k"},
        "event_id": "kombu-1",
        "received_at_ms": 42,
    }
    assert redis_client.llen("fin.events") == 0  # consumed, none left behind

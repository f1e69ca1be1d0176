"""Redis hanging or stopped: 503 with Retry-After within the bound; nothing acknowledged is lost."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest
import redis

from fin_relay.contract.fin_api import format_fin_time
from fin_relay.embedded_redis import EmbeddedRedis
from tests.fixtures.ingest import IngestServer, queued_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TIMEOUT_S = 1.0
BOUND_S = TIMEOUT_S + 3.0  # the enqueue timeout plus generous slack for a busy machine


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(appendonly=True, appendfsync="always")
    try:
        server.start()
    except Exception as exc:
        pytest.skip(f"no Redis available: {exc}")
    yield server
    server.stop()


_BODIES: dict[int, bytes] = {}


def body(i: int) -> bytes:
    """Event ``i``, byte-identical on every delivery (a redelivery is the same event)."""
    if i not in _BODIES:
        _BODIES[i] = _make_body(i)
    return _BODIES[i]


def _make_body(i: int) -> bytes:
    return json.dumps(
        {
            "event_name": "fin_status_updated",
            "conversation_id": f"conv-{i}",
            "user_id": "u",
            "status": "complete",
            "created_at_ms": format_fin_time(datetime.now(UTC)),
        }
    ).encode()


def deliver(http: httpx.Client, server: IngestServer, i: int) -> tuple[int, float, httpx.Headers]:
    b = body(i)
    started = time.monotonic()
    response = http.post(server.webhook_url, content=b, headers=server.headers(b))
    return response.status_code, time.monotonic() - started, response.headers


def test_redis_hanging_or_down_gives_bounded_503_and_loses_nothing(
    own_redis: EmbeddedRedis, start_ingest: Callable[..., IngestServer]
) -> None:
    _BODIES.clear()
    server = start_ingest(own_redis.url, env={"FIN_RELAY_ENQUEUE_TIMEOUT_S": str(TIMEOUT_S)})
    accepted: set[int] = set()
    refused: set[int] = set()
    with httpx.Client(timeout=30.0) as http:
        for i in range(5):
            status, _, _ = deliver(http, server, i)
            assert status == 202
            accepted.add(i)

        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)  # Redis hangs: connections open, no replies
        try:
            for i in range(5, 8):
                status, elapsed_s, headers = deliver(http, server, i)
                assert status == 503, status
                assert int(headers["retry-after"]) > 0
                assert elapsed_s < BOUND_S
                refused.add(i)
            assert http.get(f"{server.url}/readyz").status_code == 503
        finally:
            own_redis.process.send_signal(signal.SIGCONT)

        own_redis.stop(cleanup=False)  # Redis down: connection refused
        for i in range(8, 12):
            status, elapsed_s, headers = deliver(http, server, i)
            assert status == 503 and "retry-after" in headers
            assert elapsed_s < BOUND_S
            refused.add(i)
        assert http.get(f"{server.url}/readyz").status_code == 503

        own_redis.start()
        deadline = time.monotonic() + 30
        i = 12
        while time.monotonic() < deadline:  # the ingest reconnects by itself
            status, _, _ = deliver(http, server, i)
            if status == 202:
                accepted.add(i)
                break
            assert status == 503
            refused.add(i)
            i += 1
        assert i in accepted, "the ingest did not recover after Redis came back"
        assert http.get(f"{server.url}/readyz").status_code == 200

        client = redis.Redis.from_url(own_redis.url)
        try:
            queued = {int(e["event"]["conversation_id"][5:]) for e in queued_events(client)}
            assert accepted <= queued  # every 202 survived the hang and the restart
            for j in sorted(refused):  # Fin redelivers what got 503: each lands exactly once
                assert deliver(http, server, j)[0] in (200, 202)
            events = queued_events(client)
            ids = [e["event"]["conversation_id"] for e in events]
            assert len(ids) == len(set(ids))
            assert {int(c[5:]) for c in ids} == accepted | refused
        finally:
            client.close()

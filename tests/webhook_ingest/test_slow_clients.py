"""Slow clients against a real ``fin-relay ingest`` process over real HTTP (slowloris).

200 connections send a webhook's headers and then trickle its body one byte per second; a few
more trickle their headers, and a few never send anything. Meanwhile a normal client sends
signed webhooks. Each slow body must be cut off with 408 within ``FIN_RELAY_BODY_TIMEOUT_S``
(plus the watchdog's period and scheduling slack), slow headers and silent connections closed
within ``FIN_RELAY_HEADER_TIMEOUT_S``, nothing of theirs enqueued, and the normal client's
answers must stay fast. The figures are printed (``pytest -s``) as one ``SLOW_CLIENTS`` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from tests.fixtures.ingest import IngestServer, queued_events, sign_body

pytestmark = [pytest.mark.integration, pytest.mark.redis_broker]

BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 2.0
SLOW_BODIES = 200
SLOW_HEADERS = 10
SILENT = 10
#: The watchdogs look every 0.25 s (body) / 0.5 s (headers); the rest is scheduling on a
#: shared 2-core machine.
SLACK_S = 1.5
NORMAL_P99_BOUND_S = 0.5


def event_body(conversation_id: str) -> bytes:
    return json.dumps(
        {
            "event_name": "fin_replied",
            "conversation_id": conversation_id,
            "status": "awaiting_user_reply",
            "created_at_ms": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "message": {"id": f"m-{uuid.uuid4().hex}", "body": "hello"},
        },
        separators=(",", ":"),
    ).encode()


def request_head(body: bytes, port: int) -> bytes:
    return (
        f"POST /webhooks/fin HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Fin-Agent-API-Webhook-Signature: {sign_body(body)}\r\n\r\n"
    ).encode()


@dataclass
class Slow:
    """What one slow connection saw: the status (None: closed without an answer), after how
    long (from the moment it was ready to trickle), and how many bytes it trickled."""

    status: int | None = None
    after_s: float = -1.0
    trickled: int = 0


async def trickle(port: int, start: bytes, rest: bytes, ready: asyncio.Event) -> Slow:
    """Send ``start`` at once, then ``rest`` one byte per second until the server answers or
    closes; the clock starts when ``start`` is sent and ``ready`` is set."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = Slow()
    if start:
        writer.write(start)
        await writer.drain()
    began = time.monotonic()
    await ready.wait()

    async def send_rest() -> None:
        for i in range(len(rest)):
            await asyncio.sleep(1.0)
            writer.write(rest[i : i + 1])
            await writer.drain()
            out.trickled += 1

    sender = asyncio.create_task(send_rest())
    try:
        answer = await asyncio.wait_for(reader.read(), timeout=30)  # until the server closes
        out.after_s = time.monotonic() - began
        if answer.startswith(b"HTTP/1.1 "):
            out.status = int(answer[9:12])
    except (ConnectionError, TimeoutError):
        out.after_s = time.monotonic() - began
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return out


async def normal_client(
    url: str, stop: asyncio.Event, statuses: list[int], latencies: list[float]
) -> None:
    async with httpx.AsyncClient(timeout=10.0) as client:
        while not stop.is_set():
            body = event_body(f"fast-{uuid.uuid4().hex[:8]}")
            headers = {"content-type": "application/json", "x-fin-agent-api-webhook-signature": sign_body(body)}  # fmt: skip
            started = time.perf_counter()
            response = await client.post(url, content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            statuses.append(response.status_code)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def alone(server: IngestServer, seconds: float) -> tuple[list[int], list[float]]:
    """The normal client on its own, for comparison."""
    stop = asyncio.Event()
    statuses: list[int] = []
    latencies: list[float] = []
    clients = [
        asyncio.create_task(normal_client(server.webhook_url, stop, statuses, latencies))
        for _ in range(4)
    ]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*clients)
    return statuses, latencies


async def slowloris(server: IngestServer) -> dict[str, Any]:
    port = server.port
    base_statuses, base_latencies = await alone(server, 1.5)
    ready = asyncio.Event()
    bodies = [event_body(f"slow-{i}") for i in range(SLOW_BODIES)]
    slow_bodies = [
        asyncio.create_task(trickle(port, request_head(b, port) + b[:1], b[1:], ready))
        for b in bodies
    ]
    head = request_head(bodies[0], port)
    slow_heads = [
        asyncio.create_task(trickle(port, head[:10], head[10:], ready)) for _ in range(SLOW_HEADERS)
    ]
    silent = [asyncio.create_task(trickle(port, b"", b"", ready)) for _ in range(SILENT)]
    await asyncio.sleep(0.5)  # every connection open and its first bytes sent
    ready.set()
    stop = asyncio.Event()
    statuses: list[int] = []
    latencies: list[float] = []
    clients = [
        asyncio.create_task(normal_client(server.webhook_url, stop, statuses, latencies))
        for _ in range(4)
    ]
    slow = await asyncio.gather(*slow_bodies)
    heads = await asyncio.gather(*slow_heads)
    quiet = await asyncio.gather(*silent)
    stop.set()
    await asyncio.gather(*clients)
    return {"slow": slow, "heads": heads, "quiet": quiet, "statuses": statuses, "lat": latencies,
            "base_statuses": base_statuses, "base_lat": base_latencies}  # fmt: skip


def test_slow_clients_are_cut_off_and_fast_clients_stay_fast(
    start_ingest: Callable[..., IngestServer], redis_url: str, redis_client: redis.Redis
) -> None:
    server = start_ingest(
        redis_url,
        env={
            "FIN_RELAY_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "FIN_RELAY_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        },
    )
    got = asyncio.run(slowloris(server))
    slow: list[Slow] = got["slow"]
    heads: list[Slow] = got["heads"]
    quiet: list[Slow] = got["quiet"]
    statuses: list[int] = got["statuses"]
    latencies: list[float] = got["lat"]
    base: list[float] = got["base_lat"]

    slow_after = [s.after_s for s in slow]
    figures = {
        "slow_bodies": len(slow),
        "slow_408": sum(s.status == 408 for s in slow),
        "slow_after_s": {
            "min": round(min(slow_after), 2),
            "median": round(statistics.median(slow_after), 2),
            "max": round(max(slow_after), 2),
        },
        "slow_bytes_trickled_max": max(s.trickled for s in slow),
        "slow_headers_408": sum(h.status == 408 for h in heads),
        "slow_headers_after_max_s": round(max(h.after_s for h in heads), 2),
        "silent_closed_after_max_s": round(max(q.after_s for q in quiet), 2),
        "alone_requests": len(base),
        "alone_p50_ms": round(percentile(base, 0.50) * 1000, 1),
        "alone_p99_ms": round(percentile(base, 0.99) * 1000, 1),
        "normal_requests": len(latencies),
        "normal_p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "normal_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "normal_max_ms": round(max(latencies) * 1000, 1),
    }
    print("SLOW_CLIENTS", json.dumps(figures))

    # every slow body: 408 within the bound, none answered before it
    assert all(s.status == 408 for s in slow), [s.status for s in slow if s.status != 408][:5]
    assert min(slow_after) >= BODY_TIMEOUT_S - 0.6  # the clock started ~0.5 s after headers
    assert max(slow_after) <= BODY_TIMEOUT_S + SLACK_S
    # slow headers: 408 (a request had begun); silent connections: closed, no answer
    assert all(h.status == 408 for h in heads)
    assert max(h.after_s for h in heads) <= HEADER_TIMEOUT_S + SLACK_S
    assert all(q.status is None and q.after_s <= HEADER_TIMEOUT_S + SLACK_S for q in quiet)
    # the normal client: every webhook accepted, quickly, while the slow ones held connections
    assert len(statuses) >= 50 and set(statuses) == {202}
    assert percentile(latencies, 0.99) <= NORMAL_P99_BOUND_S
    # only the normal client's events were enqueued, and the access log says why the rest
    # were refused
    assert set(got["base_statuses"]) == {202}
    queued = queued_events(redis_client)
    assert len(queued) == len(statuses) + len(base)
    assert all(e["event"]["conversation_id"].startswith("fast-") for e in queued)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        timeouts = [a for a in server.access_lines() if a.get("status") == 408]
        if len(timeouts) >= SLOW_BODIES:
            break
        time.sleep(0.2)
    assert len(timeouts) == SLOW_BODIES
    assert {a.get("error") for a in timeouts} == {"body_timeout"}


def test_ingest_stops_promptly_with_slow_clients_connected(
    start_ingest: Callable[..., IngestServer], redis_url: str
) -> None:
    """A stop (SIGTERM) waits for requests in progress: never longer than the body timeout
    lets a slow one last (before, uvicorn waited for a stalled body indefinitely)."""
    server = start_ingest(
        redis_url,
        env={"FIN_RELAY_BODY_TIMEOUT_S": "3", "FIN_RELAY_HEADER_TIMEOUT_S": "3"},
    )

    async def hold_and_stop() -> float:
        port = server.port
        body = event_body("held")
        head = request_head(body, port)
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for _reader, writer in connections:
            writer.write(head + body[:5])  # headers, then a stalled body
            await writer.drain()
        await asyncio.sleep(0.3)
        started = time.monotonic()
        server.process.terminate()
        while server.process.poll() is None and time.monotonic() - started < 20:
            await asyncio.sleep(0.05)
        for _reader, writer in connections:
            writer.close()
        return time.monotonic() - started

    took = asyncio.run(hold_and_stop())
    assert server.process.poll() is not None, "the ingest did not stop"
    assert took <= 3 + 2.0, took
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(1)

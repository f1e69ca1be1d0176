"""Scenario 4: end-to-end latency at moderate load (fin-relay only).

Redis, the simulator (50 ms latency, webhooks 100 ms after each call, delivered to the ingest),
fin-relay's ingest and one fin-relay worker (threads, c64, both queues). Jobs are enqueued with
``fin_relay.producer`` at a steady rate, each on a new conversation. Measured:

* enqueue -> Fin call: the simulator's request-log arrival time minus the time just before
  ``producer.start()`` was called;
* webhook -> event on the stream: the ``{ns}:events`` entry id (Redis's clock at XADD) minus the
  simulator's delivery record of that event (written when the ingest answered 202; same
  machine, same clock), matched by (conversation, event name, created_at_ms).
"""

from __future__ import annotations

import time
from typing import Any

from fin_relay.bench.harness import (
    PY,
    UNLIMITED_PER_MINUTE,
    Procs,
    base_env,
    percentile,
    wait_http,
    wait_until,
)
from fin_relay.contract.envelope import Envelope
from fin_relay.contract.settings import ProducerSettings
from fin_relay.embedded_redis import free_port
from fin_relay.producer import Producer
from fin_relay.simulator.server import SimulatorConfig, start_subprocess

SECRET = "e2e-secret"
USER = {"id": "user-1", "name": "Bench User"}


def _start_components(procs: Procs, redis_url: str) -> tuple[Any, list[Any]]:
    port = free_port()
    ingest = procs.start(
        "e2e-ingest",
        [
            PY,
            "-m",
            "fin_relay.cli",
            "ingest",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        base_env(REDIS_URL=redis_url, FIN_WEBHOOK_SECRETS=SECRET),
    )
    wait_http(f"http://127.0.0.1:{port}/healthz", 30, ingest)
    sim = start_subprocess(
        SimulatorConfig(
            callback_url=f"http://127.0.0.1:{port}/webhooks/fin",
            secret=SECRET,
            rate_limit_per_minute=100_000_000,
            reply_delay_ms=100,
            faults={"*": {"latency_ms": 50}},
            log_bodies=False,
        )
    )
    env = base_env(
        REDIS_URL=redis_url,
        FIN_API_TOKEN=sim.token,
        FIN_API_BASE_URL=sim.base_url,
        FIN_RATE_LIMIT_PER_MINUTE=str(UNLIMITED_PER_MINUTE),
    )
    worker = procs.start(
        "e2e-worker",
        [
            PY,
            "-m",
            "fin_relay.cli",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            "64",
            "-l",
            "warning",
            "-n",
            "e2e@bench",
        ],
        env,
    )
    return sim, [ingest, worker]


def _paced_enqueue(producer: Producer, rate: float, count: int, tag: str) -> dict[str, float]:
    enqueued: dict[str, float] = {}
    t0 = time.monotonic()
    for i in range(count):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cid = f"e2e-{tag}-{i}"
        enqueued[cid] = time.time() * 1000.0
        producer.start(conversation_id=cid, user=USER, message="Hello there")
    return enqueued


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": float(len(values)),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
    }


def run(redis: Any, quick: bool, procs: Procs) -> dict[str, Any]:
    """Steady enqueue at ``rate`` jobs/s for ``duration_s``; both latencies' percentiles."""
    rate, duration_s = (100.0, 6) if quick else (100.0, 20)
    count = int(rate * duration_s)
    client = redis.client()
    client.flushall()
    sim, started = _start_components(procs, redis.url)
    producer = Producer(ProducerSettings(redis_url=redis.url))
    try:
        producer.start(conversation_id="e2e-warmup", user=USER, message="Hello").wait(timeout_s=60)
        sim.control.clear()
        marker = (
            client.xinfo_stream("fin:events")["last-generated-id"]
            if client.exists("fin:events")
            else "0-0"
        )
        tag = str(int(time.time()))
        enqueued = _paced_enqueue(producer, rate, count, tag)
        wait_until(
            lambda: len(client.xrange("fin:events", f"({_s(marker)}", "+")) >= 2 * count,
            60,
            "every job's 2 events on the stream",
            step_s=0.5,
        )
        requests = sim.control.requests()
        deliveries = sim.control.webhooks()
        entries = client.xrange("fin:events", f"({_s(marker)}", "+")
    finally:
        producer.close()
        for proc in started:
            procs.stop(proc)
        sim.stop()
        client.close()
    call_ms: list[float] = []
    seen: set[str] = set()
    for r in requests:
        cid = r.get("conversation_id")
        if r.get("endpoint") == "start" and cid in enqueued and cid not in seen:
            seen.add(cid)
            call_ms.append(r["time_ms"] - enqueued[cid])
    delivered: dict[tuple[Any, ...], int] = {}
    for d in deliveries:
        if d.get("method") == "POST" and d.get("ok"):
            key = (d["conversation_id"], d["event_name"], d["created_at_ms"])
            delivered.setdefault(key, d["time_ms"])
    event_ms: list[float] = []
    for entry_id, fields in entries:
        data = Envelope.from_stream_fields(fields).data
        key = (data.get("conversation_id"), data.get("event_name"), data.get("created_at_ms"))
        if key in delivered:
            event_ms.append(int(_s(entry_id).split("-")[0]) - delivered[key])
    return {
        "rate": rate,
        "duration_s": duration_s,
        "jobs": count,
        "enqueue_to_call_ms": _summary(call_ms),
        "webhook_to_stream_ms": _summary(event_ms),
        "calls_seen": len(call_ms),
        "events_matched": len(event_ms),
    }


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

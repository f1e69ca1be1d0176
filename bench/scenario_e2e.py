"""Scenario 4: end-to-end latency at moderate load (fin-relay only).

Redis, the simulator (50 ms latency, webhooks 100 ms after each call, delivered to the ingest),
fin-relay's ingest and one fin-relay worker (threads, c64, both queues). Jobs are enqueued with
``fin_relay.producer`` at a steady rate, each on a new conversation, in phases one after
another on the same processes: 50 jobs/s (each ``start`` turn makes 2 webhook events, so
100 events/s), 100 and 200 jobs/s. A job here is 3 Celery tasks (its call and its 2 events), so
200 jobs/s is 600 tasks/s for the one worker process; each phase's CPU figures say whether
that is within the process's one core (its GIL). Each phase waits until its last event is on
the stream before the next begins. Measured, per phase:

* enqueue -> Fin call: the simulator's request-log arrival time minus the time just before
  ``producer.start()`` was called;
* webhook -> event on the stream: the ``{ns}:events`` entry id (Redis's clock at XADD) minus the
  simulator's delivery record of that event (written when the ingest answered 202; same
  machine, same clock), matched by (conversation, event name, created_at_ms);
* CPU: each process's user + system CPU seconds over the phase (enqueue start to the last
  event on the stream), as a share of one core. Every process of the run shares this machine's
  cores: the worker's CPU per job says how many jobs/s one worker's core can run at most, and
  the total says how much of the machine the phase used.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fin_relay.bench.harness import (
    PY,
    UNLIMITED_PER_MINUTE,
    Procs,
    base_env,
    cpu_seconds,
    percentile,
    wait_http,
    wait_until,
)
from fin_relay.contract.envelope import Envelope
from fin_relay.contract.redisproto import text
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


#: Enqueue rates (jobs/s) of the phases, in order.
RATES = (50.0, 100.0, 200.0)
#: Seconds per phase: full, quick.
PHASE_S = (20, 3)


def run(redis: Any, quick: bool, procs: Procs) -> dict[str, Any]:
    """One phase per rate in ``RATES``, ``PHASE_S`` seconds each; both latencies' percentiles."""
    duration_s = PHASE_S[quick]
    client = redis.client()
    client.flushall()
    sim, started = _start_components(procs, redis.url)
    producer = Producer(ProducerSettings(redis_url=redis.url))
    phases: list[dict[str, Any]] = []
    try:
        try:
            producer.start(conversation_id="e2e-warmup", user=USER, message="Hello").wait(
                timeout_s=60
            )
        except TimeoutError as exc:
            logs = "\n".join(f"--- {p.label}:\n{p.logs()}" for p in started)
            raise RuntimeError(f"e2e warm-up job got no outcome ({exc}):\n{logs}") from exc
        wait_until(  # the warm-up turn's events, so that they do not land in the first phase
            lambda: client.exists("fin:events") and client.xlen("fin:events") >= 2,
            60,
            "the warm-up turn's events",
            step_s=0.1,
        )
        redis_process = getattr(redis, "process", None)  # None: a Redis this run did not start
        pids = {
            "worker": started[1].pid,
            "ingest": started[0].pid,
            "simulator": sim.process.pid,
            **({"redis": redis_process.pid} if redis_process is not None else {}),
            "load generator": os.getpid(),
        }
        for rate in RATES:
            phases.append(_phase(client, sim, producer, rate, duration_s, pids))
            p = phases[-1]
            print(
                f"  e2e {rate:.0f} jobs/s: enqueue -> call p50 "
                f"{p['enqueue_to_call_ms']['p50']:.1f} / p99 {p['enqueue_to_call_ms']['p99']:.1f}"
                f" ms; webhook -> stream p50 {p['webhook_to_stream_ms']['p50']:.1f} / p99 "
                f"{p['webhook_to_stream_ms']['p99']:.1f} ms ({p['events_rate']:.0f} events/s); "
                f"worker {p['cpu']['percent_of_core']['worker']:.0f}% of a core, "
                f"{p['cpu']['worker_ms_per_job']:.2f} ms CPU/job; all processes "
                f"{p['cpu']['total_percent']:.0f}% of {p['cpu']['cores'] * 100}%",
                flush=True,
            )
    finally:
        producer.close()
        for proc in started:
            procs.stop(proc)
        sim.stop()
        client.close()
    return {"duration_s": duration_s, "phases": phases}


def _cpu(pid: int) -> float:
    """CPU seconds of ``pid``: this process's own (its children are the measured processes),
    or another process's with its children."""
    return time.process_time() if pid == os.getpid() else cpu_seconds(pid)


def _cpu_shares(pids: dict[str, int], before: dict[str, float], elapsed_s: float) -> dict[str, Any]:
    """CPU of each process since ``before``, in percent of one core, and per job."""
    used = {label: _cpu(pid) - before[label] for label, pid in pids.items()}
    return {
        "elapsed_s": elapsed_s,
        "percent_of_core": {label: 100.0 * s / elapsed_s for label, s in used.items()},
        "total_percent": 100.0 * sum(used.values()) / elapsed_s,
        "cores": os.cpu_count() or 1,
        "seconds": used,
    }


def _phase(
    client: Any,
    sim: Any,
    producer: Producer,
    rate: float,
    duration_s: int,
    pids: dict[str, int],
) -> dict[str, Any]:
    """Enqueue at ``rate`` for ``duration_s``, wait for every event, measure both latencies
    and each process's CPU."""
    count = int(rate * duration_s)
    sim.control.clear()
    marker = client.xinfo_stream("fin:events")["last-generated-id"]
    before = client.xlen("fin:events")  # the stream's cap (100,000 entries) is not reached
    tag = f"{int(time.time())}-{rate:.0f}"
    cpu_before = {label: _cpu(pid) for label, pid in pids.items()}
    started = time.monotonic()
    enqueued = _paced_enqueue(producer, rate, count, tag)
    wait_until(
        lambda: client.xlen("fin:events") - before >= 2 * count,
        120,
        f"every job's 2 events on the stream ({rate:.0f} jobs/s)",
        step_s=0.05,
    )
    cpu = _cpu_shares(pids, cpu_before, time.monotonic() - started)
    cpu["worker_ms_per_job"] = 1000.0 * cpu["seconds"]["worker"] / count
    requests = sim.control.requests()
    deliveries = sim.control.webhooks()
    entries = client.xrange("fin:events", f"({text(marker)}", "+")
    call_ms: list[float] = []
    seen: set[str] = set()
    for r in requests:
        cid = r.get("conversation_id")
        if r.get("endpoint") == "start" and cid in enqueued and cid not in seen:
            seen.add(cid)
            call_ms.append(r["time_ms"] - enqueued[cid])
    delivered: dict[tuple[Any, ...], int] = {}
    for d in deliveries:
        if d.get("method") == "POST" and d.get("ok") and d.get("conversation_id") in enqueued:
            key = (d["conversation_id"], d["event_name"], d["created_at_ms"])
            delivered.setdefault(key, d["time_ms"])
    event_ms: list[float] = []
    for entry_id, fields in entries:
        data = Envelope.from_stream_fields(fields).data
        key = (data.get("conversation_id"), data.get("event_name"), data.get("created_at_ms"))
        if key in delivered:
            event_ms.append(int(text(entry_id).split("-")[0]) - delivered[key])
    return {
        "rate": rate,
        "events_rate": rate * len(entries) / count,
        "duration_s": duration_s,
        "jobs": count,
        "enqueue_to_call_ms": _summary(call_ms),
        "webhook_to_stream_ms": _summary(event_ms),
        "calls_seen": len(call_ms),
        "events_matched": len(event_ms),
        "cpu": cpu,
    }

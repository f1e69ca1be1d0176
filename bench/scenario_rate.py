"""Scenario 3: rate-limit utilisation, fin-relay's fleet vs a naive Celery setup, side by side.

Two simulators, each with the same per-minute quota Q (window limit Q // 6 per 10 s), run at the
same time: one serves a fleet of 2 fin-relay workers (``FIN_RATE_LIMIT_PER_MINUTE=Q``), the
other 2 naive Celery workers (``naive.call``: ``rate_limit=Q/2 per minute`` per worker +
``autoretry_for`` HTTP errors with exponential backoff). Same pool (threads), same concurrency
(64), same backlog of jobs enqueued before the workers start. Utilisation = successful calls in
the complete 10 s windows / (window limit x complete windows).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fin_relay.bench.harness import PY, Procs, base_env
from fin_relay.contract.celery_wire import task_message
from fin_relay.simulator.server import SimulatorConfig, start_subprocess

QUOTA_PER_MINUTE = 600
WINDOW_MS = 10_000
WORKERS = 2
CONCURRENCY = 64


def _enqueue(client: Any, task: str, queue: str, prefix: str, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        kwargs: dict[str, Any] = {"conversation_id": f"{prefix}-{i}-{uuid.uuid4().hex[:6]}"}
        if task == "fin.start":
            kwargs.update(message={"author": "user", "body": "Hello there"}, user={"id": "u-1"})
        pipe.lpush(queue, task_message(task, kwargs, queue=queue)[1])
    pipe.execute()


def _start_fleets(procs: Procs, redis_url: str, relay_url: str, naive_url: str) -> list[Any]:
    started = []
    for n in range(WORKERS):
        env = base_env(
            REDIS_URL=redis_url,
            FIN_API_TOKEN="sim-token",
            FIN_API_BASE_URL=relay_url,
            FIN_RATE_LIMIT_PER_MINUTE=str(QUOTA_PER_MINUTE),
        )
        cmd = [
            PY,
            "-m",
            "fin_relay.cli",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(CONCURRENCY),
            "-Q",
            "fin.calls",
            "-l",
            "warning",
            "-n",
            f"relay{n}@bench",
        ]
        started.append(procs.start(f"rate-relay{n}", cmd, env))
        env = base_env(
            REDIS_URL=redis_url,
            FIN_API_TOKEN="sim-token",
            FIN_API_BASE_URL=naive_url,
            NAIVE_RATE_LIMIT=f"{QUOTA_PER_MINUTE // WORKERS}/m",
        )
        cmd = [
            PY,
            "-m",
            "celery",
            "-A",
            "fin_relay.bench.naive_celery",
            "worker",
            "-P",
            "threads",
            "-c",
            str(CONCURRENCY),
            "-Q",
            "bench.naive",
            "-l",
            "warning",
            "-n",
            f"naive{n}@bench",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        started.append(procs.start(f"rate-naive{n}", cmd, env))
    return started


def analyse(requests: list[dict[str, Any]], t_start_ms: int, t_stop_ms: int) -> dict[str, Any]:
    """Calls per 10 s window, 429s, and utilisation over the complete windows."""
    calls = [r for r in requests if r.get("endpoint") == "start"]
    limit = QUOTA_PER_MINUTE * WINDOW_MS // 60_000
    if not calls:
        return {"ok": 0, "rate_limited": 0, "utilisation": 0.0, "windows": [], "limit": limit}
    first_w = min(r["time_ms"] for r in calls) // WINDOW_MS
    stop_w = t_stop_ms // WINDOW_MS
    windows = []
    for w in range(first_w, stop_w + 1):
        inside = [r for r in calls if r["time_ms"] // WINDOW_MS == w]
        windows.append(
            {
                "start_s": (w * WINDOW_MS - t_start_ms) / 1000.0,
                "ok": sum(1 for r in inside if r["status"] == 200),
                "rate_limited": sum(1 for r in inside if r["status"] == 429),
                "complete": first_w < w < stop_w,
            }
        )
    complete = [w for w in windows if w["complete"]]
    ok_complete = sum(w["ok"] for w in complete)
    return {
        "ok": sum(1 for r in calls if r["status"] == 200),
        "rate_limited": sum(1 for r in calls if r["status"] == 429),
        "other_errors": sum(1 for r in calls if r["status"] not in (200, 429)),
        "rate_limited_times_s": [
            (r["time_ms"] - t_start_ms) / 1000.0 for r in calls if r["status"] == 429
        ],
        "complete_windows": len(complete),
        "utilisation": ok_complete / (limit * len(complete)) if complete else float("nan"),
        "windows": windows,
        "limit": limit,
    }


def run(redis: Any, quick: bool, procs: Procs) -> dict[str, Any]:
    """Both fleets at once, each against its own simulator with quota Q; ``duration_s`` bounded."""
    duration_s = 24 if quick else 60
    backlog = int(QUOTA_PER_MINUTE / 60 * (duration_s + 15) * 1.5)
    client = redis.client()
    client.flushall()
    sims = []
    workers: list[Any] = []
    try:
        for _ in range(2):
            config = SimulatorConfig(
                rate_limit_per_minute=QUOTA_PER_MINUTE, reply_delay_ms=600_000, log_bodies=False
            )
            sims.append(start_subprocess(config))
        relay_sim, naive_sim = sims
        for sim in sims:
            sim.control.set_faults({"*": {"latency_ms": 50}})
        _enqueue(client, "fin.start", "fin.calls", "rl-relay", backlog)
        _enqueue(client, "naive.call", "bench.naive", "rl-naive", backlog)
        t_start_ms = int(time.time() * 1000)
        workers = _start_fleets(procs, redis.url, relay_sim.base_url, naive_sim.base_url)
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            dead = [w for w in workers if not w.alive()]
            if dead:
                raise RuntimeError(f"{dead[0].label} exited:\n{dead[0].logs()}")
            time.sleep(0.5)
        t_stop_ms = int(time.time() * 1000)
        for worker in workers:
            procs.stop(worker)
        relay = analyse(relay_sim.control.requests(), t_start_ms, t_stop_ms)
        naive = analyse(naive_sim.control.requests(), t_start_ms, t_stop_ms)
    finally:
        for worker in workers:
            procs.stop(worker)
        for sim in sims:
            sim.stop()
        client.close()
    return {
        "quota_per_minute": QUOTA_PER_MINUTE,
        "window_limit": QUOTA_PER_MINUTE // 6,
        "duration_s": duration_s,
        "backlog": backlog,
        "workers": WORKERS,
        "concurrency": CONCURRENCY,
        "fin_relay": relay,
        "naive": naive,
    }

"""Scenario 1: webhook ingest, side by side (wrk ``-t1 -c64``, 1 KiB signed bodies, one process).

Reuses ``fin_relay.bench.ingest_bench`` (the ingest engineer's servers, wrk script and parser)
for the ceiling, the bare endpoint and fin-relay's ingest, and adds FastAPI + ``task.delay()``
(``fin_relay.bench.bare_apps``) on the same stack.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

from fin_relay.bench import ingest_bench as ib
from fin_relay.bench.harness import RssSampler, base_env, wait_http

VARIANTS = {
    "ceiling": ("a", "ceiling: same stack, 200 without Redis"),
    "bare": ("b", "bare: read + HMAC + one awaited LPUSH"),
    "fastapi_delay": ("d", "FastAPI + HMAC + task.delay()"),
    "fin_relay": ("c", "fin-relay ingest"),
}


def _start_fastapi(port: int, redis_url: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "fin_relay.bench.bare_apps:fastapi_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    env = base_env(REDIS_URL=redis_url)
    process = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30)
    except Exception:
        ib.stop_server(process)
        raise
    return process


def _measure(
    kind: str, client: Any, redis_url: str, warmup_s: int, duration_s: int, rss: RssSampler
) -> dict[str, float]:
    client.flushall()
    port = ib._free_port()
    if kind == "d":
        process = _start_fastapi(port, redis_url)
    else:
        process = ib.start_server(kind, port, redis_url)
    try:
        if warmup_s:
            ib.run_wrk(port, warmup_s, 64, f"warm-{kind}-{time.time_ns()}")
        client.flushall()
        result = ib.run_wrk(port, duration_s, 64, f"run-{kind}-{time.time_ns()}")
        key = {"a": None, "b": "bench:bare", "c": "fin.events", "d": "bench.events"}[kind]
        result["queued"] = float(client.llen(key)) if key else float("nan")
        rss.sample()
        return result
    finally:
        ib.stop_server(process)


def run(redis: Any, quick: bool, rss: RssSampler) -> dict[str, Any]:
    """All four variants, interleaved over rounds (see the ratio note below)."""
    ib.check_signing()
    warmup_s, duration_s, rounds = (1, 3, 1) if quick else (2, 8, 3)
    client = redis.client()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    try:
        for _ in range(rounds):
            for name, (kind, _label) in VARIANTS.items():
                runs[name].append(_measure(kind, client, redis.url, warmup_s, duration_s, rss))
                print(f"  ingest {name}: {runs[name][-1]['rps']:,.0f} req/s", flush=True)
    finally:
        client.close()
    results = {name: ib._median(r) for name, r in runs.items()}
    # Ratios are taken within each round (the variants of one round ran back to back, under the
    # same background load), then the median over rounds: robust to a noisy machine.
    per_round = [
        {
            "vs_ceiling": runs["fin_relay"][i]["rps"] / runs["ceiling"][i]["rps"],
            "p99_vs_ceiling": runs["fin_relay"][i]["p99"] / runs["ceiling"][i]["p99"],
            "vs_bare": runs["fin_relay"][i]["rps"] / runs["bare"][i]["rps"],
            "vs_fastapi_delay": runs["fin_relay"][i]["rps"] / runs["fastapi_delay"][i]["rps"],
        }
        for i in range(rounds)
    ]
    ratios = {key: statistics.median(r[key] for r in per_round) for key in per_round[0]}
    return {
        "results": results,
        "labels": {name: label for name, (_k, label) in VARIANTS.items()},
        "runs": {name: [r["rps"] for r in rs] for name, rs in runs.items()},
        "ratios": ratios,
        "ratios_per_round": per_round,
        "command": f"wrk -t1 -c64 -d{duration_s}s --latency -s <signing script> "
        f"http://127.0.0.1:PORT/webhooks/fin ({warmup_s} s warm-up, {rounds} round(s); figures: the run with the median req/s; ratios: median of the per-round ratios)",
        "duration_s": duration_s,
        "rounds": rounds,
    }

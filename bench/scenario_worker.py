"""Scenario 2: worker calls/s against the simulator at 50 ms latency, side by side.

Reuses ``fin_relay.bench.worker_bench`` (the worker engineer's driver): ``run_relay`` (one
fin-relay worker process, ``-P threads``) and ``run_bare`` (a bare Celery task doing one httpx
POST + one XADD, per-thread client, same pool and concurrency). Jobs are enqueued before the
worker starts; jobs/s = N / (last end - first start). Also the default prefork setup (prefork at
its default concurrency = CPU count, the same bare task), and, in the full run, fin-relay vs
bare at several concurrencies (the throughput-vs-concurrency chart).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fin_relay.bench import worker_bench as wb
from fin_relay.bench.harness import RssSampler
from fin_relay.simulator.server import SimulatorConfig, start_subprocess

LATENCY_MS = 50.0


def _args(jobs: int, pool: str, concurrency: int, log_dir: Path) -> argparse.Namespace:
    return argparse.Namespace(
        jobs=jobs, pool=pool, concurrency=concurrency, timeout_s=180.0, logdir=str(log_dir)
    )


def _jobs_for(concurrency: int, quick: bool) -> int:
    """About 3 s (quick: 1.5 s) of work at the theoretical rate, 200..3000 jobs."""
    theory = concurrency / (LATENCY_MS / 1000.0)
    seconds = 1.5 if quick else 3.0
    return int(max(200, min(3000, theory * seconds)))


def _ratio(relay: dict[str, float], bare: dict[str, float]) -> float:
    return relay["jobs_s"] / min(64 / (LATENCY_MS / 1000.0), bare["jobs_s"])


def _main_rounds(
    url: str, target: str, jobs: int, rounds: int, log_dir: Path
) -> tuple[dict[str, dict[str, float]], list[dict[str, float]]]:
    """fin-relay then bare at c64, ``rounds`` times; the round with the median ratio."""
    pairs = []
    for _ in range(rounds):
        relay = wb.run_relay(url, target, _args(jobs, "threads", 64, log_dir))
        bare = wb.run_bare(url, target, _args(jobs, "threads", 64, log_dir), "threadlocal")
        print(
            f"  worker c64: fin-relay {relay['jobs_s']:,.0f}, bare {bare['jobs_s']:,.0f} jobs/s",
            flush=True,
        )
        pairs.append((relay, bare))
    ordered = sorted(pairs, key=lambda p: _ratio(*p))
    relay, bare = ordered[len(ordered) // 2]
    summary = [
        {"fin_relay": r["jobs_s"], "bare": b["jobs_s"], "ratio": _ratio(r, b)} for r, b in pairs
    ]
    return {"fin_relay": relay, "bare": bare}, summary


def run(redis: Any, quick: bool, rss: RssSampler, log_dir: Path) -> dict[str, Any]:
    """fin-relay vs bare (threads c64) vs default prefork; plus a concurrency sweep (full)."""
    sim = start_subprocess(
        SimulatorConfig(
            rate_limit_per_minute=100_000_000,
            log_limit=1000,
            reply_delay_ms=600_000,
            log_bodies=False,
        )
    )
    try:
        sim.control.set_faults({"*": {"latency_ms": LATENCY_MS}})
        url, target = redis.url, sim.base_url
        cpus = os.cpu_count() or 1
        jobs64 = _jobs_for(64, quick)
        main, rounds = _main_rounds(url, target, jobs64, 1 if quick else 3, log_dir)
        prefork_jobs = 60 if quick else 300
        main["prefork_default"] = wb.run_bare(
            url, target, _args(prefork_jobs, "prefork", cpus, log_dir), "threadlocal"
        )
        print(f"  worker prefork c{cpus}: {main['prefork_default']['jobs_s']:,.0f}", flush=True)
        sweep: dict[str, dict[int, float]] = {
            "fin_relay": {64: main["fin_relay"]["jobs_s"]},
            "bare": {64: main["bare"]["jobs_s"]},
        }
        for conc in () if quick else (8, 16, 32):
            jobs = _jobs_for(conc, quick)
            sweep["fin_relay"][conc] = wb.run_relay(
                url, target, _args(jobs, "threads", conc, log_dir)
            )["jobs_s"]
            sweep["bare"][conc] = wb.run_bare(
                url, target, _args(jobs, "threads", conc, log_dir), "threadlocal"
            )["jobs_s"]
            print(
                f"  worker sweep c{conc}: fin-relay {sweep['fin_relay'][conc]:,.0f}, "
                f"bare {sweep['bare'][conc]:,.0f}",
                flush=True,
            )
    finally:
        sim.stop()
    theory = 64 / (LATENCY_MS / 1000.0)
    cap = min(theory, main["bare"]["jobs_s"])
    return {
        "rounds": rounds,
        "results": main,
        "sweep": {k: dict(sorted(v.items())) for k, v in sweep.items()},
        "theory_jobs_s": theory,
        "cap_jobs_s": cap,
        "ratio_vs_cap": main["fin_relay"]["jobs_s"] / cap,
        "ratio_vs_bare": main["fin_relay"]["jobs_s"] / main["bare"]["jobs_s"],
        "ratio_vs_prefork": main["fin_relay"]["jobs_s"] / main["prefork_default"]["jobs_s"],
        "jobs": jobs64,
        "prefork_jobs": prefork_jobs,
        "cpus": cpus,
    }

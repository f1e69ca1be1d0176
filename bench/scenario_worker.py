"""Scenario 2: worker calls/s against the simulator at 50 ms latency, side by side.

Reuses ``fin_relay.bench.worker_bench`` (the worker engineer's driver): one fin-relay worker
process (``-P threads -c 64``) vs a bare Celery task doing one httpx POST + one XADD (per-thread
client, same pool and concurrency), in two modes, each round running fin-relay then bare:

* live (``run_live``): the worker starts on an empty broker and answers ``ping``; then a plain
  Celery client (``bench/celery_sender.py``, its own process) sends the jobs as fast as it can
  with ``send_task`` while the worker consumes. Jobs/s = N / (last completion on the variant's
  stream - first send).
* backlog (``run_relay`` / ``run_bare``): the jobs are enqueued before the worker starts;
  jobs/s = N / (last end - first start).

Each goal is the median of the rounds' ratios. Also the worker's peak RSS in those rounds, the
default prefork setup (prefork at its default concurrency = CPU count, the same bare task),
and, in the full run, fin-relay vs bare at several concurrencies (the throughput chart).
"""

from __future__ import annotations

import argparse
import os
import statistics
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


#: Jobs per c64 run (both modes, both variants): full, quick.
JOBS_C64 = (3000, 600)
#: c64 rounds per mode: full, quick.
ROUNDS = (3, 1)


def _ratio(relay: dict[str, float], bare: dict[str, float]) -> float:
    """fin-relay's jobs/s / the bare task's, in one round."""
    return relay["jobs_s"] / bare["jobs_s"]


def _mode_summary(pairs: list[tuple[dict[str, float], dict[str, float]]]) -> dict[str, Any]:
    """Every round's figures and ratio, the median ratio, and the round with the median ratio
    (whose figures the table shows)."""
    rounds = [
        {
            "fin_relay": relay["jobs_s"],
            "bare": bare["jobs_s"],
            "ratio": _ratio(relay, bare),
            "fin_relay_rss_peak_mib": relay["rss_peak_mib"],
            "bare_rss_peak_mib": bare["rss_peak_mib"],
            "fin_relay_ok": relay["ok"],
            "bare_ok": bare["ok"],
            **(
                {"fin_relay_send_s": relay["send_s"], "bare_send_s": bare["send_s"]}
                if "send_s" in relay
                else {}
            ),
            "fin_relay_detail": relay,
            "bare_detail": bare,
        }
        for relay, bare in pairs
    ]
    ordered = sorted(rounds, key=lambda r: r["ratio"])
    middle = ordered[len(ordered) // 2]
    return {
        "rounds": rounds,
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
        "results": {"fin_relay": middle["fin_relay_detail"], "bare": middle["bare_detail"]},
    }


def _c64_rounds(
    url: str, target: str, jobs: int, rounds: int, log_dir: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``rounds`` rounds at c64, each: live fin-relay, live bare, backlog fin-relay, backlog
    bare (product and bare task alternate); one summary per mode."""
    live: list[tuple[dict[str, float], dict[str, float]]] = []
    backlog: list[tuple[dict[str, float], dict[str, float]]] = []
    args = _args(jobs, "threads", 64, log_dir)
    for n in range(rounds):
        relay = wb.run_live("relay", url, target, args)
        bare = wb.run_live("bare", url, target, args)
        live.append((relay, bare))
        print(
            f"  worker c64 round {n + 1}, live: fin-relay {relay['jobs_s']:,.0f}, "
            f"bare {bare['jobs_s']:,.0f} jobs/s ({_ratio(relay, bare):.2f}x; sends took "
            f"{relay['send_s']:.1f} / {bare['send_s']:.1f} s)",
            flush=True,
        )
        relay = wb.run_relay(url, target, args)
        bare = wb.run_bare(url, target, args, "threadlocal")
        backlog.append((relay, bare))
        print(
            f"  worker c64 round {n + 1}, backlog: fin-relay {relay['jobs_s']:,.0f}, "
            f"bare {bare['jobs_s']:,.0f} jobs/s ({_ratio(relay, bare):.2f}x)",
            flush=True,
        )
    return _mode_summary(live), _mode_summary(backlog)


def _rss_summary(*modes: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of each variant over every c64 round of ``modes``, and their ratio."""
    relay = [r["fin_relay_rss_peak_mib"] for m in modes for r in m["rounds"]]
    bare = [r["bare_rss_peak_mib"] for m in modes for r in m["rounds"]]
    return {
        "fin_relay_peak_mib": max(relay),
        "bare_peak_mib": max(bare),
        "ratio": max(relay) / max(bare),
        "fin_relay_per_round": relay,
        "bare_per_round": bare,
    }


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
        jobs64 = JOBS_C64[quick]
        live, backlog = _c64_rounds(url, target, jobs64, ROUNDS[quick], log_dir)
        main: dict[str, dict[str, float]] = dict(backlog["results"])
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
        "live": _strip(live),
        "backlog": _strip(backlog),
        "rss": _rss_summary(live, backlog),
        "results": main,
        "sweep": {k: dict(sorted(v.items())) for k, v in sweep.items()},
        "theory_jobs_s": theory,
        "cap_jobs_s": cap,
        "ratio_vs_cap": main["fin_relay"]["jobs_s"] / cap,
        "ratio_vs_bare": main["fin_relay"]["jobs_s"] / main["bare"]["jobs_s"],
        "ratio_vs_prefork": main["fin_relay"]["jobs_s"] / main["prefork_default"]["jobs_s"],
        "latency_ms": LATENCY_MS,
        "jobs": jobs64,
        "prefork_jobs": prefork_jobs,
        "cpus": cpus,
    }


def _strip(mode: dict[str, Any]) -> dict[str, Any]:
    """A mode's summary without the per-round detail dicts (the report needs the figures)."""
    return {
        "rounds": [
            {k: v for k, v in r.items() if not k.endswith("_detail")} for r in mode["rounds"]
        ],
        "median_ratio": mode["median_ratio"],
        "results": mode["results"],
    }

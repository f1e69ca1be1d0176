"""Smoke tests of the benchmark suite's pure parts (no processes, no timing)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from fin_relay.bench import report, report_md
from fin_relay.bench.harness import label_of, percentile
from fin_relay.bench.scenario_rate import analyse

REPO = Path(__file__).resolve().parents[2]


def _requests(start_ms: int) -> list[dict[str, object]]:
    # window 0: partial (first call); windows 1 and 2 complete; window 3 = stop window
    out: list[dict[str, object]] = [
        {"endpoint": "start", "time_ms": start_ms + 5_000, "status": 200}
    ]
    for w in (1, 2):
        out += [
            {"endpoint": "start", "time_ms": start_ms + w * 10_000 + i, "status": 200}
            for i in range(95)
        ]
    out.append({"endpoint": "start", "time_ms": start_ms + 20_500, "status": 429})
    out.append({"endpoint": "capabilities", "time_ms": start_ms + 20_600, "status": 200})
    return out


def test_analyse_counts_complete_windows_and_429s() -> None:
    start = 1_700_000_000_000  # a multiple of 10 s
    result = analyse(_requests(start), start, start + 35_000)
    assert result["limit"] == 100
    assert result["ok"] == 191
    assert result["rate_limited"] == 1
    assert result["complete_windows"] == 2
    assert math.isclose(result["utilisation"], 0.95)
    assert [w["rate_limited"] for w in result["windows"]] == [0, 0, 1, 0]


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert math.isnan(percentile([], 50))


def test_labels_from_command_lines() -> None:
    worker = [
        "python",
        "-m",
        "celery",
        "-A",
        "fin_relay.worker.app",
        "worker",
        "-P",
        "threads",
        "-c",
        "64",
    ]
    assert label_of(worker) == "worker (fin-relay, threads c64)"
    assert label_of(["/usr/bin/redis-server", "*:0"]) == "Redis"
    assert label_of(["wrk", "-t1"]) is None


def test_quick_checks_are_not_judged_and_full_checks_are() -> None:
    results = {
        "producer": {
            "ratio": 0.5,
            "median": {"send_task": 2.0, "producer": 1.0},
            "jobs": 10,
            "rounds": 1,
        }
    }
    assert [c["passed"] for c in report.checks(results, quick=True)] == [None]
    assert [c["passed"] for c in report.checks(results, quick=False)] == [False]
    run = {
        "mode": "full",
        "command": "python -m bench",
        "elapsed_s": 1.0,
        "rss_mib": {},
        "errors": {},
        "skipped": {"ingest": "wrk missing"},
        "date": "today",
    }
    text = report_md.markdown(
        results, report.checks(results, quick=False), run, {"CPU": "x"}, {}, REPO
    )
    assert "| producer: start() / send_task | 0.50x | >= 0.9x | FAIL |" in text
    assert "ingest: not measured" in text


def test_help_runs_from_the_repo_root() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout and "--no-write" in out.stdout


def _mode(relay: list[float], bare: list[float]) -> dict[str, object]:
    rounds = [
        {
            "fin_relay": a,
            "bare": b,
            "ratio": a / b,
            "fin_relay_rss_peak_mib": 110.0,
            "bare_rss_peak_mib": 100.0,
            "fin_relay_ok": 100,
            "bare_ok": 100,
        }
        for a, b in zip(relay, bare, strict=True)
    ]
    figures = {
        "jobs_s": relay[0],
        "rss_mib": 100.0,
        "rss_peak_mib": 110.0,
        "cpu_ms_per_job": 4.0,
        "ok": 100,
        "send_s": 1.0,
        "elapsed_s": 2.0,
        "ready_s": 1.0,
    }
    return {
        "rounds": rounds,
        "median_ratio": sorted(r["ratio"] for r in rounds)[len(rounds) // 2],
        "results": {"fin_relay": figures, "bare": {**figures, "jobs_s": bare[0]}},
    }


def _latency(p50: float, p99: float) -> dict[str, float]:
    return {"n": 100.0, "p50": p50, "p90": p99 / 2, "p99": p99, "max": p99 * 2}


def _worker_and_e2e_results() -> dict[str, object]:
    live = _mode([300.0, 310.0, 290.0], [300.0, 300.0, 300.0])
    for r in live["rounds"]:  # type: ignore[attr-defined]
        r.update(fin_relay_send_s=2.5, bare_send_s=2.0)
    backlog = _mode([280.0, 290.0, 270.0], [300.0, 300.0, 300.0])
    prefork = {"jobs_s": 30.0, "rss_mib": 150.0, "rss_peak_mib": 160.0, "cpu_ms_per_job": 9.0}
    phases = [
        {
            "rate": rate,
            "events_rate": 2 * rate,
            "duration_s": 3,
            "jobs": int(3 * rate),
            "enqueue_to_call_ms": _latency(2.0, 20.0 if rate < 200 else 40.0),
            "webhook_to_stream_ms": _latency(4.0, 12.0),
            "calls_seen": int(3 * rate),
            "events_matched": int(6 * rate),
        }
        for rate in (50.0, 100.0, 200.0)
    ]
    phases[2]["cpu"] = {
        "elapsed_s": 3.0,
        "percent_of_core": {"worker": 90.0, "ingest": 15.0},
        "total_percent": 105.0,
        "cores": 2,
        "seconds": {"worker": 2.7, "ingest": 0.45},
        "worker_ms_per_job": 4.5,
    }
    return {
        "worker": {
            "live": live,
            "backlog": backlog,
            "rss": {
                "fin_relay_peak_mib": 110.0,
                "bare_peak_mib": 100.0,
                "ratio": 1.1,
                "fin_relay_per_round": [110.0] * 6,
                "bare_per_round": [100.0] * 6,
            },
            "results": {**backlog["results"], "prefork_default": prefork},  # type: ignore[dict-item]
            "sweep": {"fin_relay": {64: 280.0}, "bare": {64: 300.0}},
            "theory_jobs_s": 1280.0,
            "cap_jobs_s": 300.0,
            "latency_ms": 50.0,
            "jobs": 100,
            "prefork_jobs": 10,
            "cpus": 2,
        },
        "e2e": {"duration_s": 3, "phases": phases},
    }


def test_worker_and_e2e_goals_are_judged_with_their_rounds() -> None:
    results = _worker_and_e2e_results()
    verdicts = {
        c["name"]: (report._fmt(c), c["passed"]) for c in report.checks(results, quick=False)
    }
    live = "worker, sending while consuming: fin-relay / bare jobs/s (c64, median of 3 round(s))"
    backlog = "worker, pre-built backlog: fin-relay / bare jobs/s (c64, median of 3 round(s))"
    assert verdicts[live] == ("1.00x", True)
    assert verdicts[backlog] == ("0.93x", False)
    assert verdicts["worker peak RSS (c64): fin-relay / bare"] == ("1.10x", False)
    assert verdicts["e2e: enqueue -> Fin call p50 at 100 jobs/s"] == ("2.0 ms", True)
    assert verdicts["e2e: enqueue -> Fin call p99 at 100 jobs/s"] == ("20.0 ms", True)
    assert verdicts["e2e: enqueue -> Fin call p99 at 200 jobs/s"] == ("40.0 ms", False)
    assert verdicts["e2e: webhook answered -> event on stream p99 at 100 events/s"] == (
        "12.0 ms",
        True,
    )
    assert "e2e: enqueue -> Fin call p50 at 50 jobs/s" not in verdicts
    assert all(c["passed"] is None for c in report.checks(results, quick=True))
    run = {
        "mode": "full",
        "command": "python -m bench",
        "elapsed_s": 1.0,
        "rss_mib": {},
        "errors": {},
        "skipped": {},
        "date": "today",
    }
    checks = report.checks(results, quick=False)
    text = report_md.markdown(results, checks, run, {"CPU": "x"}, {}, REPO)
    console = report.table(results, checks, run)
    for out in (text, console):
        assert "round 1: 300 / 300 = 1.00x (sends took 2.5 / 2.0 s); round 2: 310" in out
        assert "round 1: 280 / 300 = 0.93x; round 2: 290 / 300 = 0.97x" in out
        assert "round 3: 270 / 300 = 0.90x; median 0.93x" in out
        assert "peak 110 / 100 = 1.10x" in out
        assert "p50 2.0 ms, p90 20.0 ms, p99 40.0 ms, max 80.0 ms (n=100)" in out
        # each phase's CPU, where measured, and the jobs/s the worker's CPU per job allows
        assert (
            "CPU in % of one core: worker 90%, ingest 15%; all together 105% of the machine's "
            "200%. Worker CPU per job (its call and 2 events, 3 tasks): 4.50 ms, so one core "
            "runs at most 222 such jobs/s." in out
        )
        assert out.count("CPU in % of one core") == 1
    # the rounds come right under the goals table
    assert text.index("median 0.93x") < text.index("## Figures")


def test_celery_sender_sends_the_documented_job_with_celery_only(tmp_path: Path) -> None:
    from fin_relay.bench import celery_sender

    kwargs = celery_sender.job_kwargs("fin", 7, "t")
    assert set(kwargs) == {"conversation_id", "user", "message"}
    assert celery_sender.TASKS == {
        "fin": ("fin.start", "fin.calls"),
        "bare": ("bench.bare_call", "celery"),
    }
    assert celery_sender.job_kwargs("bare", 7, "t") == {"i": 7}
    script = REPO / "bench" / "celery_sender.py"
    code = (
        "import runpy, sys; sys.argv = ['s', '--help']\n"
        "try:\n    runpy.run_path(sys.argv_path, run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('fin_relay')))"
    ).replace("sys.argv_path", repr(str(script)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-P", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "--broker" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"

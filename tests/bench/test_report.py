"""Smoke tests of the benchmark suite's pure parts (no processes, no timing)."""

from __future__ import annotations

import math
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

"""``fin-relay bench`` / ``python -m bench``: every benchmark scenario side by side, in one run.

Prints a table; writes ``BENCHMARKS.md`` and PNG charts in ``bench/charts/`` (unless
``--no-write``). ``--quick`` finishes in under 2 minutes (the CI smoke test). Ratio goals are
checked only in the full run, reported as pass/fail; they change the exit status only with
``--strict``. A scenario that crashes makes the exit status 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCENARIOS = ("ingest", "worker", "rate", "e2e", "producer", "simulator")


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``fin-relay bench``."""
    parser.add_argument("--quick", action="store_true", help="short runs (< 2 min): smoke test")
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print only: do not touch BENCHMARKS.md or bench/charts/",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a ratio goal fails (full run only)"
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="where to write the report (default: BENCHMARKS.md at the repo root)",
    )


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    """Run the selected scenarios; stop every child process at the end, even on error/Ctrl-C."""
    from fin_relay.bench import harness, report, report_md

    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        print(f"fin-relay bench: unknown scenario(s): {', '.join(unknown)}")
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    facts = harness.machine_facts()
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    mode = "quick" if args.quick else "full"
    print(f"fin-relay bench ({mode}): {', '.join(chosen)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fin-relay-bench-") as tmp:
        procs = harness.Procs(Path(tmp))
        rss = harness.RssSampler().start()
        redis_server = None
        try:
            from fin_relay.embedded_redis import EmbeddedRedis

            redis_server = EmbeddedRedis().start()
            for name in chosen:
                step = _scenario(name, redis_server, args.quick, rss, procs, Path(tmp))
                why_not = harness.ensure_wrk() if name in ("ingest", "simulator") else None
                if why_not:
                    skipped[name] = why_not
                    print(f"- {name}: skipped: {why_not}", flush=True)
                    continue
                print(f"- {name} ...", flush=True)
                t0 = time.monotonic()
                try:
                    results[name] = step()
                    results[name]["elapsed_s"] = time.monotonic() - t0
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                finally:
                    procs.stop_all()
                print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
        except KeyboardInterrupt:
            print("fin-relay bench: interrupted; stopping every child process", flush=True)
            return 130
        finally:
            rss.sample()
            rss.stop()
            procs.stop_all()
            if redis_server is not None:
                redis_server.stop()
    elapsed_s = time.monotonic() - started
    run_info = {
        "mode": mode,
        "command": _command(args),
        "elapsed_s": elapsed_s,
        "rss_mib": dict(sorted(rss.peak_mib.items())),
        "errors": errors,
        "skipped": skipped,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    checks = report.checks(results, quick=args.quick)
    print()
    print(report.table(results, checks, run_info))
    print(f"\ntotal: {elapsed_s:.0f} s")
    if not args.no_write:
        out = Path(args.output) if args.output else harness.REPO / "BENCHMARKS.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        charts = report.write_charts(results, harness.REPO / "bench" / "charts")
        out.write_text(report_md.markdown(results, checks, run_info, facts, charts, out.parent))
        print(f"wrote {out} and {len(charts)} chart(s)")
    if errors:
        return 1
    if args.strict and not args.quick and any(c["passed"] is False for c in checks):
        return 1
    return 0


def _command(args: argparse.Namespace) -> str:
    parts = ["python -m bench"]
    if args.quick:
        parts.append("--quick")
    if args.only != ",".join(SCENARIOS):
        parts.append(f"--only {args.only}")
    return " ".join(parts)


def _scenario(
    name: str, redis: Any, quick: bool, rss: Any, procs: Any, log_dir: Path
) -> Callable[[], dict[str, Any]]:
    from fin_relay.bench import (
        scenario_e2e,
        scenario_ingest,
        scenario_misc,
        scenario_rate,
        scenario_worker,
    )

    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "ingest": lambda: scenario_ingest.run(redis, quick, rss),
        "worker": lambda: scenario_worker.run(redis, quick, rss, log_dir),
        "rate": lambda: scenario_rate.run(redis, quick, procs),
        "e2e": lambda: scenario_e2e.run(redis, quick, procs),
        "producer": lambda: scenario_misc.run_producer(redis, quick),
        "simulator": lambda: scenario_misc.run_simulator(quick),
    }
    return steps[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

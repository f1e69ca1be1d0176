"""Worker throughput benchmark (standalone; the bench suite folds it in).

One worker process against the simulator (subprocess) with a fixed latency, at a given pool and
concurrency, compared in the same run with a *bare* Celery task doing one httpx POST (+ one
XADD, like the baseline) in the same pool and concurrency:

    .venv/bin/python bench/worker_bench.py --jobs 3000 --concurrency 64 --latency-ms 50

Prints jobs/s for each variant, the ratio to min(concurrency / latency, bare), and the
worker's RSS. Two modes (``--mode``): ``backlog`` (default) enqueues the jobs before the worker
starts, jobs/s = N / (last end - first start); ``live`` starts the worker first, waits until it
answers ``ping``, then a plain Celery client (``bench/celery_sender.py``) sends the jobs while
it consumes, jobs/s = N / (last completion - first send).

This module is also the bare Celery app: ``celery -A fin_relay.bench.worker_bench:bare_app``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

REPO = Path(__file__).resolve().parents[1]

# --- the bare Celery app (only configured when BENCH_BROKER is set) -------------------------

bare_app = Celery("bare", set_as_current=False)
bare_app.conf.update(
    broker_url=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:1/0"),
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    result_backend=None,
)
_local = threading.local()
_shared: dict[str, httpx.Client] = {}
_results_client: dict[str, redis.Redis] = {}


def _client() -> httpx.Client:
    if os.environ.get("BENCH_CLIENT") == "shared":
        if "c" not in _shared:
            _shared["c"] = httpx.Client(
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
            )
        return _shared["c"]
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = httpx.Client(
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=2)
        )
    return client


@bare_app.task(name="bench.bare_call")
def bare_call(i: int) -> None:
    t0 = time.time()
    response = _client().post(
        os.environ["BENCH_TARGET"] + "/fin/start",
        headers={"Authorization": "Bearer sim-token", "Intercom-Version": "2.15"},
        json={
            "conversation_id": f"bare-{i}-{uuid.uuid4().hex[:6]}",
            "message": {"author": "user", "body": "hi", "timestamp": "2026-01-01T00:00:00.000Z"},
            "user": {"id": "u"},
        },
    )
    if "r" not in _results_client:
        _results_client["r"] = redis.Redis.from_url(os.environ["BENCH_BROKER"])
    _results_client["r"].xadd(
        "bench:bare", {"t0": t0, "t1": time.time(), "s": response.status_code}
    )


# --- the driver -----------------------------------------------------------------------------

#: The plain Celery client of the live mode: a script run with ``-P`` and no ``PYTHONPATH``, so
#: it imports Celery only, no fin-relay.
SENDER = Path(__file__).resolve().with_name("celery_sender.py")
#: Where each variant's completions are XADDed: fin-relay's result stream, the bare task's own.
RELAY_STREAM = "fin:results"
BARE_STREAM = "bench:bare"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mib(pid: int) -> float:
    """Peak RSS (the kernel's high-water mark, ``VmHWM``) of ``pid`` plus its children's, MiB."""
    import psutil  # type: ignore[import-untyped]

    pids = [pid]
    with contextlib.suppress(psutil.Error):
        pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    total = 0.0
    for one in pids:
        try:
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_worker(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=str(REPO)
    )


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def _worker_cmd(app: str, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-P",
        args.pool,
        "-c",
        str(args.concurrency),
        "-l",
        "warning",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def _bare_env(url: str, sim_url: str, client_kind: str) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_BROKER": url,
        "BENCH_TARGET": sim_url,
        "BENCH_CLIENT": client_kind,
        "PYTHONPATH": str(REPO),
    }


def _relay_env(url: str, sim_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIN_")}
    env.update(
        {
            "REDIS_URL": url,
            "FIN_API_TOKEN": "sim-token",
            "FIN_API_BASE_URL": sim_url,
            "FIN_RATE_LIMIT_PER_MINUTE": "100000000",
            "PYTHONPATH": str(REPO),
        }
    )
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> float:
    """Block until the worker answers a remote-control ``ping`` (its consumer loop runs: it
    takes messages); returns the seconds waited. Same for both variants (Celery's own
    readiness signal, no sleep)."""
    node = f"celery@{socket.gethostname()}"
    app = Celery("ready-check", broker=url, set_as_current=False)
    t0 = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with status {proc.returncode} during start")
            if app.control.ping(destination=[node], timeout=0.25):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"worker {node} did not answer ping within {timeout_s:.0f} s")
    finally:
        app.close()


def _send(url: str, kind: str, jobs: int) -> dict[str, float]:
    """Run the plain Celery client (its own process) to completion; its send times."""
    out = subprocess.run(
        [sys.executable, "-P", str(SENDER), "--broker", url, "--kind", kind, "--jobs", str(jobs)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=str(REPO),
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"celery_sender failed ({out.returncode}): {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _stream_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


def run_live(
    kind: str, url: str, sim_url: str, args: argparse.Namespace, client_kind: str = "threadlocal"
) -> dict[str, float]:
    """Live mode: start the worker (``kind`` = ``relay`` or ``bare``) on an empty broker,
    wait until it answers ``ping``, then let the plain Celery client send ``args.jobs`` jobs as
    fast as it can while the worker consumes. Jobs/s = N / (last completion - first send);
    completions are the entries of the variant's stream (Redis clock at XADD), the first send
    is the client's clock (same machine)."""
    r = redis.Redis.from_url(url)
    r.flushall()
    if kind == "relay":
        cmd, env = _worker_cmd("fin_relay.worker.app", args), _relay_env(url, sim_url)
        stream, sender_kind = RELAY_STREAM, "fin"
    else:
        cmd = _worker_cmd("fin_relay.bench.worker_bench:bare_app", args)
        env, stream, sender_kind = _bare_env(url, sim_url, client_kind), BARE_STREAM, "bare"
    proc = _start_worker(cmd, env, Path(args.logdir) / f"{kind}-live.log")
    try:
        ready_s = wait_ready(url, proc)
        sent = _send(url, sender_kind, args.jobs)
        _wait(lambda: r.xlen(stream) >= args.jobs, args.timeout_s, f"{kind} live jobs")
        rss, peak, cpu = _rss_mib(proc.pid), _peak_rss_mib(proc.pid), _cpu_s(proc.pid)
    finally:
        _stop(proc)
    entries = r.xrange(stream)
    t1 = max(_stream_ms(entry_id) for entry_id, _ in entries) / 1000.0
    if kind == "relay":
        from fin_relay.contract.envelope import Envelope

        ok = sum(Envelope.from_stream_fields(f).type == "call.succeeded" for _, f in entries)
    else:
        ok = sum(f[b"s"] == b"200" for _, f in entries)
    elapsed = t1 - sent["first_send"]
    return {
        "jobs_s": args.jobs / elapsed,
        "elapsed_s": elapsed,
        "send_s": sent["last_send"] - sent["first_send"],
        "ready_s": ready_s,
        "rss_mib": rss,
        "rss_peak_mib": peak,
        "cpu_ms_per_job": cpu * 1000 / args.jobs,
        "ok": ok,
    }


def run_bare(
    url: str, sim_url: str, args: argparse.Namespace, client_kind: str
) -> dict[str, float]:
    """Backlog mode, bare task: enqueue every job, then start the worker."""
    r = redis.Redis.from_url(url)
    r.flushall()
    env = _bare_env(url, sim_url, client_kind)
    bare_app.conf.broker_url = url
    for i in range(args.jobs):
        bare_app.send_task("bench.bare_call", args=(i,), queue="celery")
    cmd = _worker_cmd("fin_relay.bench.worker_bench:bare_app", args)
    proc = _start_worker(cmd, env, Path(args.logdir) / f"bare-{client_kind}.log")
    try:
        _wait(lambda: r.xlen(BARE_STREAM) >= args.jobs, args.timeout_s, "bare jobs")
        rss, peak, cpu = _rss_mib(proc.pid), _peak_rss_mib(proc.pid), _cpu_s(proc.pid)
    finally:
        _stop(proc)
    entries = r.xrange(BARE_STREAM)
    t0 = min(float(f[b"t0"]) for _, f in entries)
    t1 = max(float(f[b"t1"]) for _, f in entries)
    ok = sum(f[b"s"] == b"200" for _, f in entries)
    return {
        "jobs_s": args.jobs / (t1 - t0),
        "rss_mib": rss,
        "rss_peak_mib": peak,
        "cpu_ms_per_job": cpu * 1000 / args.jobs,
        "ok": ok,
    }


def run_relay(url: str, sim_url: str, args: argparse.Namespace) -> dict[str, float]:
    """Backlog mode, fin-relay: LPUSH every pre-built job message, then start the worker."""
    from fin_relay.contract.celery_wire import task_message
    from fin_relay.contract.envelope import Envelope

    r = redis.Redis.from_url(url)
    r.flushall()
    pipe = r.pipeline(transaction=False)
    for i in range(args.jobs):
        kwargs = {
            "conversation_id": f"relay-{i}-{uuid.uuid4().hex[:6]}",
            "message": {"author": "user", "body": "hi"},
            "user": {"id": "u"},
        }
        pipe.lpush("fin.calls", task_message("fin.start", kwargs)[1])
    pipe.execute()
    cmd = _worker_cmd("fin_relay.worker.app", args)
    proc = _start_worker(cmd, _relay_env(url, sim_url), Path(args.logdir) / "relay.log")
    try:
        _wait(lambda: r.xlen(RELAY_STREAM) >= args.jobs, args.timeout_s, "relay jobs")
        rss, peak, cpu = _rss_mib(proc.pid), _peak_rss_mib(proc.pid), _cpu_s(proc.pid)
    finally:
        _stop(proc)
    envs = [Envelope.from_stream_fields(f) for _, f in r.xrange(RELAY_STREAM)]
    starts = [int(r.hget(f"fin:job:{e.data['job_id']}", "first_seen_ms") or 0) for e in envs]
    from fin_relay.contract.fin_api import parse_fin_time

    t1 = max(parse_fin_time(e.occurred_at).timestamp() for e in envs)
    t0 = min(starts) / 1000.0
    ok = sum(e.type == "call.succeeded" for e in envs)
    return {
        "jobs_s": args.jobs / (t1 - t0),
        "rss_mib": rss,
        "rss_peak_mib": peak,
        "cpu_ms_per_job": cpu * 1000 / args.jobs,
        "ok": ok,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--timeout-s", type=float, default=180.0)
    parser.add_argument(
        "--shared-client", action="store_true", help="also measure a shared httpx client"
    )
    parser.add_argument("--logdir", default="/tmp")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mode", choices=("backlog", "live"), default="backlog")
    args = parser.parse_args()

    from fin_relay.embedded_redis import EmbeddedRedis
    from fin_relay.simulator.server import SimulatorConfig, start_subprocess

    server = EmbeddedRedis()
    server.start()
    sim = start_subprocess(
        SimulatorConfig(
            rate_limit_per_minute=100_000_000,
            log_limit=1000,
            reply_delay_ms=600_000,
            log_bodies=False,
        )
    )
    try:
        sim.control.set_faults({"*": {"latency_ms": args.latency_ms}})
        out: dict[str, Any] = {
            "concurrency": args.concurrency,
            "pool": args.pool,
            "latency_ms": args.latency_ms,
            "jobs": args.jobs,
            "runs": [],
        }
        theory = args.concurrency / (args.latency_ms / 1000.0)
        for _ in range(args.reps):  # interleaved, so machine noise hits both alike
            if args.mode == "live":
                run: dict[str, Any] = {
                    "bare_threadlocal": run_live("bare", server.url, sim.base_url, args)
                }
                if args.shared_client:
                    run["bare_shared"] = run_live("bare", server.url, sim.base_url, args, "shared")
                run["fin_relay"] = run_live("relay", server.url, sim.base_url, args)
            else:
                run = {"bare_threadlocal": run_bare(server.url, sim.base_url, args, "threadlocal")}
                if args.shared_client:
                    run["bare_shared"] = run_bare(server.url, sim.base_url, args, "shared")
                run["fin_relay"] = run_relay(server.url, sim.base_url, args)
            cap = min(theory, run["bare_threadlocal"]["jobs_s"])
            run["ratio"] = run["fin_relay"]["jobs_s"] / cap
            out["runs"].append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
        ratios = sorted(r["ratio"] for r in out["runs"])
        out["theory_jobs_s"] = theory
        out["median_bare_jobs_s"] = statistics.median(
            r["bare_threadlocal"]["jobs_s"] for r in out["runs"]
        )
        out["median_fin_relay_jobs_s"] = statistics.median(
            r["fin_relay"]["jobs_s"] for r in out["runs"]
        )
        out["median_ratio"] = statistics.median(ratios)
        out["fin_relay_rss_mib"] = max(r["fin_relay"]["rss_mib"] for r in out["runs"])
        print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    finally:
        sim.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark plumbing: child processes, RSS sampling, wrk, machine facts, small statistics.

Every process started through :class:`Procs` is stopped by :meth:`Procs.stop_all` (SIGTERM, then
SIGKILL, each by its own process group id), which the CLI calls in a ``finally``: on success, on
error and on Ctrl-C. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

#: Worker settings shared by every fin-relay worker the benchmarks start (no rate limit unless
#: a scenario sets one: the simulator's quota is raised to match).
UNLIMITED_PER_MINUTE = 60_000_000


def base_env(**extra: str) -> dict[str, str]:
    """The parent's environment without FIN_*/REDIS_URL, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@dataclass
class Proc:
    """One child process, with a label (for RSS figures) and a log file."""

    label: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def logs(self, tail: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-tail:]


@dataclass
class Procs:
    """Registry of the children of one benchmark run; ``stop_all`` ends every one."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, label: str, cmd: list[str], env: dict[str, str]) -> Proc:
        log_path = self.log_dir / f"{label}-{len(self.procs)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.log_dir),
                start_new_session=True,  # own process group: children (prefork) die with it
            )
        proc = Proc(label, process, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL it."""
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.process.wait(10)
        _signal_group(proc.pid, signal.SIGKILL)  # leftover children of the group, if any
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            try:
                self.stop(proc, timeout_s=8.0)
            except Exception as exc:  # keep stopping the others
                print(f"bench: could not stop {proc.label} (pid {proc.pid}): {exc}")


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# --- waiting --------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.1
) -> Any:
    """Poll ``predicate`` until truthy; ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(step_s)


def wait_http(url: str, timeout_s: float = 30.0, proc: Proc | None = None) -> None:
    """Wait until ``url`` answers any HTTP status (the server is listening)."""

    def up() -> bool:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.label} exited during start:\n{proc.logs()}")
        try:
            httpx.get(url, timeout=1.0)
            return True
        except httpx.HTTPError:
            return False

    wait_until(up, timeout_s, url)


# --- RSS --------------------------------------------------------------------------------------


_LABELS = (  # (substring of the command line, label); first match wins
    ("redis-server", "Redis"),
    ("fin_relay.worker.app", "worker (fin-relay, {pool} c{conc})"),
    ("worker_bench:bare_app", "worker (bare Celery, {pool} c{conc})"),
    ("naive_celery", "worker (naive Celery, {pool} c{conc})"),
    ("fin_relay.cli worker", "worker (fin-relay, {pool} c{conc})"),
    ("fin_relay.cli ingest", "ingest (fin-relay)"),
    ("ingest_bench:ceiling_app", "ingest (ceiling app)"),
    ("ingest_bench:bare_app", "ingest (bare endpoint)"),
    ("bare_apps:fastapi_app", "ingest (FastAPI + delay)"),
    ("simulator", "simulator"),
    ("loadcheck:bare_app", "bare 50 ms ASGI app"),
    ("loadcheck:sink_app", "webhook sink"),
)


def label_of(cmdline: list[str]) -> str | None:
    """A readable label for a child process of the benchmark, from its command line."""
    text = " ".join(cmdline)
    if text.startswith("wrk") or "/wrk " in text:
        return None
    for needle, label in _LABELS:
        if needle in text:
            pool = _option(cmdline, ("-P", "--pool"), "prefork")
            conc = _option(cmdline, ("-c", "--concurrency"), str(os.cpu_count()))
            node = _option(cmdline, ("-n", "--hostname"), "")
            text = label.format(pool=pool, conc=conc)
            return f"{text[:-1]}, {node.split('@')[0]})" if node and text.endswith(")") else text
    return None


def _option(cmdline: list[str], names: tuple[str, ...], default: str) -> str:
    for i, arg in enumerate(cmdline[:-1]):
        if arg in names:
            return cmdline[i + 1]
    return default


class RssSampler:
    """Samples the RSS (process + its children) of every child of this process (labelled from
    its command line) and of explicitly watched pids, every ``interval_s`` in a thread; keeps the
    peak per label."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.watched: dict[int, str] = {}
        self.peak_mib: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def watch(self, pid: int, label: str) -> None:
        self.watched[pid] = label

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> None:
        try:
            for child in psutil.Process().children():
                if child.pid not in self.watched:
                    label = label_of(child.cmdline())
                    if label is not None:
                        self.watched[child.pid] = label
        except psutil.Error:
            pass
        for pid, label in list(self.watched.items()):
            rss = tree_rss_mib(pid)
            if rss is None:
                self.watched.pop(pid, None)
            elif rss > self.peak_mib.get(label, 0.0):
                self.peak_mib[label] = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


def tree_rss_mib(pid: int) -> float | None:
    """RSS of ``pid`` plus its children, MiB; ``None`` if it is gone."""
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return float(total) / 2**20
    except psutil.Error:
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (0 if gone)."""
    try:
        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return float(total)
    except psutil.Error:
        return 0.0


# --- wrk ------------------------------------------------------------------------------------


def ensure_wrk() -> str | None:
    """``None`` when wrk is available (installing it with apt when root); else why not."""
    if shutil.which("wrk"):
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: wrk missing: apt-get install -y wrk ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "wrk"], env=env, capture_output=True, timeout=300
        )
        if shutil.which("wrk"):
            return None
    return "wrk is not installed: run `sudo apt-get install -y wrk` (Debian/Ubuntu) and re-run"


# --- machine facts and statistics -----------------------------------------------------------

PACKAGES = (
    "celery",
    "kombu",
    "redis",
    "hiredis",
    "httpx",
    "httpcore",
    "uvicorn",
    "uvloop",
    "httptools",
    "fastapi",
    "starlette",
    "pydantic",
    "orjson",
    "matplotlib",
)


def machine_facts() -> dict[str, str]:
    """CPU model and count, RAM, kernel, Python, Redis server, wrk and key package versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = {
        "CPU": f"{cpu} x {os.cpu_count()}",
        "RAM": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "Kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "OS": _os_name(),
        "Load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    try:
        from fin_relay.embedded_redis import find_redis_server

        binary, origin = find_redis_server()
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        facts["Redis server"] = f"{out.stdout.split()[2].removeprefix('v=')} ({origin})"
    except Exception:
        pass
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        facts["wrk"] = (out.stdout + out.stderr).split("[")[0].replace("wrk", "").strip()
    versions = []
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    facts["Packages"] = ", ".join(versions)
    return facts


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile (``nan`` for no values)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(pct / 100.0 * len(ordered))))
    return ordered[rank - 1]

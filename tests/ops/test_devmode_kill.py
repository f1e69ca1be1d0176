"""``fin-relay dev`` killed with SIGKILL (no handler runs, nothing is stopped by it): on Linux
every child it started (the embedded redis-server, the simulator, the ingest and the worker)
still exits, through the kernel's parent-death signal. Each child's exit is awaited by polling
its pid against a deadline."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fin_relay.embedded_redis import port_is_free
from tests.ops.test_devmode import _alive, _children, _cmdline, _ports, _running, _start_dev

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="the parent-death signal is Linux's (prctl PR_SET_PDEATHSIG); see fin_relay/devmode.py",
)

#: A child's exit after its parent's death: SIGTERM, then its own clean stop (the worker's
#: warm shutdown included).
EXIT_DEADLINE_S = 60.0


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[Any]]]:
    """``fin-relay dev`` processes a test started: killed, with every descendant still running,
    if the test left them."""
    procs: list[subprocess.Popen[Any]] = []
    yield procs
    for proc in procs:
        descendants = _children(proc.pid) if proc.poll() is None else set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for pid in descendants:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _await_exit(pids: dict[int, str], deadline_s: float) -> dict[int, str]:
    """Poll until every pid has exited (or is a zombie) or the deadline passes; return those
    still running (and SIGKILL them, so a failing test leaves nothing behind)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    left = {pid: what for pid, what in pids.items() if _alive(pid)}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def _by_role(pids: set[int]) -> dict[int, str]:
    return {pid: _cmdline(pid) for pid in pids}


def _working_in(directory: Path) -> dict[int, str]:
    """Running processes whose working directory is ``directory``: fin-relay dev's children
    (but the redis-server, which works in its data directory), also one forked a moment
    before the kill and so in no list taken earlier."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            pid = int(entry.name)
            if Path(cwd) == directory and pid != os.getpid() and _alive(pid):
                found[pid] = _cmdline(pid)
    return found


def test_dev_sigkill_every_child_exits(
    tmp_path: Path, started: list[subprocess.Popen[Any]]
) -> None:
    proc, out = _start_dev(tmp_path, started, "--no-demo")
    printed = _running(out)
    children = _by_role(_children(proc.pid))
    running = "\n".join(children.values())
    for part in ("redis-server", " simulator ", " ingest ", " worker "):
        assert part in running, (part, running)
    ports = _ports(printed)
    ingest_port = int(re.search(r":(\d+)/webhooks", "\n".join(out.seen)).group(1))  # type: ignore[union-attr]

    proc.kill()  # SIGKILL: fin-relay dev stops nothing itself
    assert proc.wait(timeout=10) == -signal.SIGKILL

    left = _await_exit(children, EXIT_DEADLINE_S)
    assert not left, f"children left running after fin-relay dev was SIGKILLed: {left}"
    assert not _working_in(tmp_path)
    for port in [*ports, ingest_port]:
        assert port_is_free(port), f"port {port} still taken"


def test_dev_sigkill_during_start_every_child_exits(
    tmp_path: Path, started: list[subprocess.Popen[Any]]
) -> None:
    """Killed while it starts the simulator, ingest and worker: what runs already exits."""
    proc, out = _start_dev(tmp_path, started, "--no-demo")
    line = out.until(r"redis\s+redis://", 30)
    redis_port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
    children = _by_role(_children(proc.pid))
    assert any("redis-server" in what for what in children.values()), children
    proc.kill()
    proc.wait(timeout=10)
    # a child forked just before the kill is in no list: found by its working directory
    children.update(_working_in(tmp_path))
    left = _await_exit(children, EXIT_DEADLINE_S)
    assert not left, f"children left running after fin-relay dev was SIGKILLed: {left}"
    assert not _await_exit(_working_in(tmp_path), EXIT_DEADLINE_S)
    assert port_is_free(redis_port), "the embedded redis-server still listens"

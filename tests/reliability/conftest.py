"""Fixtures of the reliability suite: real processes that the tests break on purpose.

* ``sim_process(**SimulatorConfig fields)``: a simulator **subprocess** (no GIL shared with the
  load generator), stopped at teardown.
* ``own_redis(appendfsync=...)``: a dedicated Redis with AOF on a fixed port (so it can be
  killed and restarted in place, keeping its data dir), stopped at teardown.
* ``worker_procs(redis_url, base_url=..., env=...)``: real Celery worker processes on *any*
  Redis (the shared ``celery_worker_proc`` fixture is bound to the session Redis), stopped at
  teardown; on the product's default configuration (``product_defaults=True``, the default
  here: the reliability suite runs what users run); ``product_defaults=False`` adds the tests'
  short timings (``tests/fixtures/worker.py``);
  ``wait=False``: returns at once (``tests.fixtures.worker.wait_ready`` waits later).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fin_relay.embedded_redis import EmbeddedRedis, free_port
from fin_relay.simulator.server import SimulatorConfig, SubprocessHandle, start_subprocess
from tests.fixtures.worker import (
    TEST_WORKER_ENV,
    WorkerProcess,
    spawn_worker,
    wait_ready,
    worker_command,
    worker_env,
)


@pytest.fixture
def sim_process() -> Iterator[Callable[..., SubprocessHandle]]:
    """Factory: a simulator subprocess on a free port (``reply_delay_ms`` 200 by default)."""
    handles: list[SubprocessHandle] = []

    def start(**fields: Any) -> SubprocessHandle:
        fields.setdefault("reply_delay_ms", 200.0)
        handle = start_subprocess(SimulatorConfig(**fields), timeout_s=30)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


@pytest.fixture
def own_redis() -> Iterator[Callable[..., EmbeddedRedis]]:
    """Factory: a dedicated Redis with ``appendonly yes`` on a fixed port."""
    servers: list[EmbeddedRedis] = []

    def start(appendfsync: str = "always") -> EmbeddedRedis:
        server = EmbeddedRedis(port=free_port(), appendonly=True, appendfsync=appendfsync)
        servers.append(server)
        try:
            server.start()
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"could not start a dedicated Redis: {exc}")
        return server

    yield start
    for server in servers:
        server.stop()


def reliability_worker_command(command: str, hostname: str, concurrency: int) -> list[str]:
    """``celery``: the fixtures' command (``tests/fixtures/worker.py``, gossip, mingle and
    heartbeat off); ``fin-relay``: ``fin-relay worker`` as documented; ``celery-defaults``:
    ``celery -A fin_relay.worker.app worker`` with Celery's defaults (all three on)."""
    queues = "fin.calls,fin.events"
    if command == "celery":
        return worker_command(hostname, "threads", concurrency, queues)
    if command == "fin-relay":
        return [sys.executable, "-m", "fin_relay.cli", "worker",
                "-c", str(concurrency), "-Q", queues, "-n", hostname]  # fmt: skip
    if command == "celery-defaults":
        return worker_command(hostname, "threads", concurrency, queues, celery_defaults=True)
    raise ValueError(f"unknown worker command {command!r}: celery, fin-relay, celery-defaults")


@pytest.fixture
def worker_procs(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: ``worker_procs(redis_url, base_url=..., concurrency=8, env={...},
    command="celery", product_defaults=True, wait=True)`` (``command``: see
    :func:`reliability_worker_command`)."""
    started: list[WorkerProcess] = []

    def start(
        redis_url: str,
        *,
        base_url: str,
        concurrency: int = 8,
        env: dict[str, str] | None = None,
        namespace: str = "fin",
        ready_timeout_s: float = 60.0,
        command: str = "celery",
        product_defaults: bool = True,
        wait: bool = True,
    ) -> WorkerProcess:
        index = len(started)
        hostname = f"rel{index}-{uuid.uuid4().hex[:6]}@test"
        extra = dict(env or {})
        full_env = worker_env(redis_url, base_url, "sim-token", namespace, extra)
        if product_defaults:
            for key in TEST_WORKER_ENV.keys() - extra.keys():
                del full_env[key]
        worker = spawn_worker(
            reliability_worker_command(command, hostname, concurrency),
            full_env,
            tmp_path / f"worker-{index}.log",
            hostname=hostname,
            namespace=namespace,
        )
        started.append(worker)
        if wait:
            wait_ready(worker, redis_url, ready_timeout_s)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout_s=10)


@dataclass(frozen=True)
class RestartRig:
    """The process factories a Redis-restart scenario starts its pieces with."""

    own_redis: Callable[..., EmbeddedRedis]
    sim_process: Callable[..., SubprocessHandle]
    start_ingest: Callable[..., Any]
    worker_procs: Callable[..., WorkerProcess]


@pytest.fixture
def restart_rig(
    own_redis: Callable[..., EmbeddedRedis],
    sim_process: Callable[..., SubprocessHandle],
    start_ingest: Callable[..., Any],
    worker_procs: Callable[..., WorkerProcess],
) -> RestartRig:
    return RestartRig(own_redis, sim_process, start_ingest, worker_procs)

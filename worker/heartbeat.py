"""Liveness key of a consuming worker: ``{ns}:worker:{hostname}`` (JSON, short TTL), and the
consumption watchdog.

The key is set on ``worker_ready`` (so tests and ``fin-relay doctor`` know the worker consumes)
and refreshed by a daemon thread; removed at shutdown.

The watchdog (same thread) catches Celery's known failure of a worker that silently stops
consuming after a broker reconnect: when a queue this worker consumes keeps holding messages
for ``FIN_RELAY_STUCK_CONSUMER_S`` while this worker has free slots and starts no task, it logs
CRITICAL and exits with status 3, so its supervisor (systemd, Kubernetes, compose
``restart:``) starts a fresh one. Unacked jobs come back after the visibility timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time

import redis

from fin_relay.worker.runtime import Runtime

log = logging.getLogger("fin_relay.worker.heartbeat")

INTERVAL_S = 2.0
TTL_MS = 10_000

_stop = threading.Event()
_state: dict[str, object] = {}
STUCK_EXIT_CODE = 3


class StallDetector:
    """Pure decision logic of the watchdog (fed by the heartbeat thread; unit-tested)."""

    def __init__(self, threshold_s: float, slots: int) -> None:
        self.threshold_s = threshold_s
        self.slots = slots
        self.active = 0
        self.last_start_s = time.monotonic()
        self._backlog_since_s: float | None = None
        self._lock = threading.Lock()

    def task_started(self) -> None:
        with self._lock:
            self.active += 1
            self.last_start_s = time.monotonic()

    def task_finished(self) -> None:
        with self._lock:
            self.active = max(0, self.active - 1)

    def observe(self, waiting: int, now_s: float | None = None) -> bool:
        """Feed the number of messages waiting in our queues; True when the worker is stuck."""
        now = time.monotonic() if now_s is None else now_s
        if self.threshold_s <= 0 or waiting <= 0 or self.active >= self.slots:
            self._backlog_since_s = None
            return False
        if self._backlog_since_s is None or self.last_start_s > self._backlog_since_s:
            self._backlog_since_s = max(now, self.last_start_s) if waiting else None
            return False
        return now - self._backlog_since_s >= self.threshold_s


detector: StallDetector | None = None


def _check_stall(runtime: Runtime, queues: list[str]) -> None:
    if detector is None or not queues or not runtime.settings.broker_is_redis:
        return
    pipe = runtime.redis.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
    waiting = sum(int(n) for n in pipe.execute())
    if detector.observe(waiting):
        log.critical(
            "worker stopped consuming: %d job(s) waiting in %s for %.0fs while %d of %d slots "
            "are free; exiting with status %d so a supervisor restarts it",
            waiting,
            ",".join(queues),
            detector.threshold_s,
            detector.slots - detector.active,
            detector.slots,
            STUCK_EXIT_CODE,
        )
        logging.shutdown()
        os._exit(STUCK_EXIT_CODE)


def _beat(runtime: Runtime, key: str, hostname: str) -> None:
    value = json.dumps({"pid": os.getpid(), "hostname": hostname, "at_ms": int(time.time() * 1000)})
    runtime.redis.set(key, value, px=TTL_MS)


def _loop(runtime: Runtime, key: str, hostname: str, queues: list[str]) -> None:
    while not _stop.wait(INTERVAL_S):
        try:
            _beat(runtime, key, hostname)
            _check_stall(runtime, queues)
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)


def start(runtime: Runtime, hostname: str, queues: list[str] | None = None) -> None:
    """Write the key now and keep it fresh; watch ``queues`` for a stalled consumer."""
    key = runtime.names.worker_heartbeat(hostname)
    _stop.clear()
    _beat(runtime, key, hostname)
    thread = threading.Thread(
        target=_loop,
        args=(runtime, key, hostname, list(queues or [])),
        name="fin-relay-heartbeat",
        daemon=True,
    )
    thread.start()
    _state.update(runtime=runtime, key=key)


def stop() -> None:
    """Stop beating and delete the key (best effort)."""
    _stop.set()
    runtime, key = _state.pop("runtime", None), _state.pop("key", None)
    if isinstance(runtime, Runtime) and isinstance(key, str):
        with contextlib.suppress(redis.RedisError):
            runtime.redis.delete(key)

"""Liveness of a consuming worker, the reaper of dead workers' messages, and the consumption
watchdog, all run by one daemon thread of the worker process (every ``INTERVAL_S``).

* ``{ns}:worker:{hostname}`` (JSON: pid, owner id, last beat; ``TTL_MS``): set on
  ``worker_ready`` (so tests and ``fin-relay doctor`` know the worker consumes), refreshed,
  removed at shutdown.
* The broker lease (``fin_relay.worker.transport``, fix 4): ``worker_ready`` turns on the
  recording of every message this process takes under its owner id; each beat renews the
  process's lease on the broker and puts back, at the head of their queues, the unacked
  messages of processes whose lease ran out (SIGKILL, OOM kill, lost host): within
  ``transport.LEASE_MS`` + ``INTERVAL_S`` of the death instead of the visibility timeout. Being
  a thread of its own, the beat goes on while the event loop or the task threads are busy.
  A graceful stop releases the lease.
* The watchdog catches Celery's known failure of a worker that silently stops consuming after a
  broker reconnect: when a queue this worker consumes keeps holding messages for
  ``FIN_RELAY_STUCK_CONSUMER_S`` while this worker has free slots and starts no task, it logs
  CRITICAL, releases its lease (its unacked jobs are put back by the other workers at once)
  and exits with status 3, so its supervisor (systemd, Kubernetes, compose ``restart:``)
  starts a fresh one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time

import redis

from fin_relay.worker import transport
from fin_relay.worker.runtime import Runtime

log = logging.getLogger("fin_relay.worker.heartbeat")

#: Beat, lease renewal and reaping period. A dead worker's messages come back
#: ``transport.LEASE_MS`` (10 s) to ``LEASE_MS + INTERVAL_S`` after its last beat.
INTERVAL_S = 2.0
#: The liveness key outlives 5 missed beats, like the broker lease.
TTL_MS = transport.LEASE_MS

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
        # what this process holds goes back to the queues now, not when its lease runs out,
        # and its jobs' leases (keyed on the liveness key) are free at once
        transport.release_ownership()
        key = _state.get("key")
        if isinstance(key, str):
            with contextlib.suppress(redis.RedisError):
                runtime.redis.delete(key)
        logging.shutdown()
        os._exit(STUCK_EXIT_CODE)


def _beat(runtime: Runtime, key: str, hostname: str, owner: str) -> None:
    value = json.dumps(
        {"pid": os.getpid(), "hostname": hostname, "owner": owner, "at_ms": int(time.time() * 1000)}
    )
    runtime.redis.set(key, value, px=TTL_MS)


def _loop(runtime: Runtime, key: str, hostname: str, owner: str, queues: list[str]) -> None:
    while not _stop.wait(INTERVAL_S):
        try:
            _beat(runtime, key, hostname, owner)
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)
        try:
            transport.keep_alive()  # the broker may be another Redis: not tied to the beat
        except Exception:  # the thread must live on: it is what keeps the lease
            log.exception("broker lease renewal failed")
        try:
            _check_stall(runtime, queues)
        except redis.RedisError as exc:
            log.warning("consumption watchdog check failed: %s", exc)


def start(runtime: Runtime, hostname: str, queues: list[str] | None = None) -> None:
    """Take the broker lease, write the key now and keep both fresh, reap dead workers'
    messages, watch ``queues`` for a stalled consumer."""
    key = runtime.names.worker_heartbeat(hostname)
    _stop.clear()
    owner = transport.enable_ownership()
    _beat(runtime, key, hostname, owner)
    thread = threading.Thread(
        target=_loop,
        args=(runtime, key, hostname, owner, list(queues or [])),
        name="fin-relay-heartbeat",
        daemon=True,
    )
    thread.start()
    _state.update(runtime=runtime, key=key, thread=thread, pid=os.getpid())


def stop() -> None:
    """Stop beating, release the broker lease and delete the key (best effort). A no-op in a
    process that did not start it (a prefork pool child inherits the parent's state)."""
    if _state.get("pid") != os.getpid():
        return
    _stop.set()
    thread = _state.pop("thread", None)
    if isinstance(thread, threading.Thread) and thread is not threading.current_thread():
        thread.join(transport.KEEPALIVE_TIMEOUT_S * 2 + 1)  # no renewal after the release
    transport.release_ownership()
    runtime, key = _state.pop("runtime", None), _state.pop("key", None)
    _state.pop("pid", None)
    if isinstance(runtime, Runtime) and isinstance(key, str):
        with contextlib.suppress(redis.RedisError):
            runtime.redis.delete(key)

"""Liveness key of a consuming worker: ``{ns}:worker:{hostname}`` (JSON, short TTL).

Set on ``worker_ready`` (so tests and ``fin-relay doctor`` know the worker consumes) and
refreshed by a daemon thread; removed at shutdown.
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


def _beat(runtime: Runtime, key: str, hostname: str) -> None:
    value = json.dumps({"pid": os.getpid(), "hostname": hostname, "at_ms": int(time.time() * 1000)})
    runtime.redis.set(key, value, px=TTL_MS)


def _loop(runtime: Runtime, key: str, hostname: str) -> None:
    while not _stop.wait(INTERVAL_S):
        try:
            _beat(runtime, key, hostname)
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)


def start(runtime: Runtime, hostname: str) -> None:
    """Write the key now and keep it fresh."""
    key = runtime.names.worker_heartbeat(hostname)
    _stop.clear()
    _beat(runtime, key, hostname)
    thread = threading.Thread(
        target=_loop, args=(runtime, key, hostname), name="fin-relay-heartbeat", daemon=True
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

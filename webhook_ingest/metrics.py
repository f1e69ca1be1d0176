"""``GET /metrics`` for the ingest: Prometheus exposition, multi-process aware.

Per-request counters (``fin_relay_webhooks_total{status}``, ``fin_relay_dedup_hits_total``) are
incremented by :class:`RequestMetrics` from the access-log hook; the queue depth gauges
(``fin.calls``, ``fin.events``) are read from the broker at scrape time, with a timeout. Only
the ingest's own series are listed (``observability.INGEST_METRICS``; worker series live on the
workers' ``FIN_RELAY_METRICS_PORT``), also with a ``PROMETHEUS_MULTIPROC_DIR`` shared with
workers.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis

from fin_relay import observability
from fin_relay.contract.names import CALLS_QUEUE, EVENTS_QUEUE


class RequestMetrics:
    """Counts webhook answers by status, and duplicates; label children cached (cheap)."""

    def __init__(self) -> None:
        self._by_status: dict[int, Any] = {}

    def record(self, status: int, dedup: str | None) -> None:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = observability.WEBHOOKS.labels(str(status))
        child.inc()
        if dedup == "duplicate":
            observability.DEDUP_HITS.inc()


class MetricsEndpoint:
    """ASGI app serving the exposition; queue depths from ``broker_url`` when it is Redis."""

    def __init__(self, broker_url: str | None, timeout_s: float = 1.0) -> None:
        self._url = broker_url
        self._timeout_s = timeout_s
        self._client: aioredis.Redis | None = None

    async def _queue_depths(self) -> None:
        if self._url is None:
            return
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s
            )
        with contextlib.suppress(Exception):  # a scrape must answer even with Redis down
            async with asyncio.timeout(self._timeout_s):
                pipe = self._client.pipeline(transaction=False)
                pipe.llen(CALLS_QUEUE)
                pipe.llen(EVENTS_QUEUE)
                calls, events = await pipe.execute()
            observability.QUEUE_DEPTH.labels(CALLS_QUEUE).set(calls)
            observability.QUEUE_DEPTH.labels(EVENTS_QUEUE).set(events)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("method") not in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [(b"allow", b"GET, HEAD")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await self._queue_depths()
        body = observability.metrics_payload(observability.INGEST)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", observability.METRICS_CONTENT_TYPE.encode())],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body}
        )

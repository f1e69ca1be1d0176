"""Signed webhook delivery like a real sender: async, ordered per conversation, with retries.

Retry policy (Intercom documents none; chosen here and configurable): up to ``webhook_attempts``
(5) attempts per event, waiting ``webhook_backoff_s`` (0.5 s) doubling between attempts, each
attempt with a ``webhook_timeout_s`` (5 s) timeout; any 2xx is success, anything else (another
status, a refused/dropped connection, a timeout) is a failure. A redelivery is byte-identical
(same body, same signature). Events of one conversation are delivered one at a time in order, so
a failing receiver delays that conversation's later events; conversations are independent.

Switches: ``webhook_duplicate`` (every event delivered twice), ``webhook_out_of_order`` (each
batch of events delivered in reverse order), ``webhook_head_probe`` (a ``HEAD`` to the callback
URL before the first POST to it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from fin_relay.simulator.config import SimulatorConfig
from fin_relay.simulator.httpclient import RawPostClient

SIGNATURE_HEADER = "X-Fin-Agent-API-Webhook-Signature"


def sign(secret: str, body: bytes) -> str:
    """The header value: ``sha256=`` + 64 lowercase hex of HMAC-SHA256(secret UTF-8, body)."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def encode_event(event: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as is, like Intercom's emoji in CSAT options)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Dispatcher:
    """Owns delivery queues, the HTTP clients and the delivery log. One per running app."""

    def __init__(self, config_source: Callable[[], SimulatorConfig]) -> None:
        self._config = config_source
        self._queues: dict[str, deque[tuple[bytes, dict[str, Any]]]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._probed: set[str] = set()
        self.log: deque[dict[str, Any]] = deque(maxlen=config_source().log_limit)
        self.generated = 0
        self.attempts = 0
        self.failed_attempts = 0
        self._raw: RawPostClient | None = None
        self._httpx: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Create the clients inside the running loop."""
        self._raw = RawPostClient()
        self._httpx = httpx.AsyncClient(limits=httpx.Limits(max_connections=64))

    async def stop(self) -> None:
        """Cancel pending deliveries and close the clients."""
        for task in list(self._workers):
            task.cancel()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        if self._raw is not None:
            self._raw.close()
        if self._httpx is not None:
            await self._httpx.aclose()

    def pending(self) -> int:
        """Events queued or being delivered."""
        return sum(len(q) for q in self._queues.values()) + len(self._workers)

    def stats(self) -> dict[str, int]:
        """Counters since start (not cleared with the log)."""
        raw = self._raw
        return {
            "pending": self.pending(),
            "generated": self.generated,
            "attempts": self.attempts,
            "failed_attempts": self.failed_attempts,
            "connects": raw.connects if raw is not None else 0,
        }

    def clear_log(self) -> None:
        """Forget the delivery log (pending deliveries continue)."""
        self.log.clear()

    def enqueue(self, conversation_id: str, events: list[dict[str, Any]]) -> None:
        """Queue one batch of events (already in documented order) for delivery."""
        config = self._config()
        self.generated += len(events)
        if config.webhook_out_of_order:
            events = list(reversed(events))
        queue = self._queues.get(conversation_id)
        if queue is None:
            queue = self._queues[conversation_id] = deque()
            task = asyncio.get_running_loop().create_task(self._drain(conversation_id, queue))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        for event in events:
            body = encode_event(event)
            queue.append((body, event))
            if config.webhook_duplicate:
                queue.append((body, {**event, "_duplicate": True}))

    async def _drain(
        self, conversation_id: str, queue: deque[tuple[bytes, dict[str, Any]]]
    ) -> None:
        try:
            while queue:
                body, event = queue.popleft()
                try:
                    await self._deliver(body, event)
                except Exception as exc:  # never let one event stop the conversation's queue
                    self._record(event=event, url=self._config().callback_url, attempt=0,
                                 status=None, error=f"internal: {exc!r}", duplicate=False,
                                 method="POST")  # fmt: skip
        finally:
            self._queues.pop(conversation_id, None)
            if queue:  # cancelled: nothing more to do
                queue.clear()

    async def _deliver(self, body: bytes, event: dict[str, Any]) -> None:
        config = self._config()
        url = config.callback_url
        duplicate = bool(event.get("_duplicate"))
        if url is None:
            self._record(
                event=event,
                url=url,
                attempt=0,
                status=None,
                error="no callback_url configured",
                duplicate=duplicate,
                method="POST",
            )
            return
        if config.webhook_head_probe and url not in self._probed:
            self._probed.add(url)
            await self._head(url, config.webhook_timeout_s, event)
        headers = [
            ("Content-Type", "application/json"),
            (SIGNATURE_HEADER, sign(config.secret, body)),
            ("User-Agent", "fin-relay-simulator"),
        ]
        backoff = config.webhook_backoff_s
        for attempt in range(1, config.webhook_attempts + 1):
            status, error = await self._post(url, body, headers, config.webhook_timeout_s)
            self.attempts += 1
            if status is None or not 200 <= status < 300:
                self.failed_attempts += 1
            self._record(
                event=event,
                url=url,
                attempt=attempt,
                status=status,
                error=error,
                duplicate=duplicate,
                method="POST",
            )
            if status is not None and 200 <= status < 300:
                return
            if attempt < config.webhook_attempts:
                await asyncio.sleep(backoff)
                backoff *= 2

    async def _post(
        self, url: str, body: bytes, headers: list[tuple[str, str]], timeout_s: float
    ) -> tuple[int | None, str | None]:
        try:
            if url.startswith("http://") and self._raw is not None:
                return await self._raw.post(url, body, headers, timeout_s), None
            assert self._httpx is not None
            response = await self._httpx.post(
                url, content=body, headers=dict(headers), timeout=timeout_s
            )
            return response.status_code, None
        except (TimeoutError, httpx.TimeoutException):
            return None, "timeout"
        except (OSError, httpx.HTTPError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    async def _head(self, url: str, timeout_s: float, event: dict[str, Any]) -> None:
        assert self._httpx is not None
        try:
            response = await self._httpx.head(url, timeout=timeout_s)
            status: int | None = response.status_code
            error = None
        except httpx.HTTPError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        self._record(
            event=event,
            url=url,
            attempt=1,
            status=status,
            error=error,
            duplicate=False,
            method="HEAD",
        )

    def _record(
        self,
        *,
        event: dict[str, Any],
        url: str | None,
        attempt: int,
        status: int | None,
        error: str | None,
        duplicate: bool,
        method: str,
    ) -> None:
        message = event.get("message")
        self.log.append(
            {
                "time_ms": time.time_ns() // 1_000_000,
                "method": method,
                "url": url,
                "event_name": event.get("event_name") if method == "POST" else None,
                "conversation_id": event.get("conversation_id"),
                "event_status": event.get("status"),
                "message_id": message.get("id") if isinstance(message, dict) else None,
                "created_at_ms": event.get("created_at_ms"),
                "attempt": attempt,
                "status": status,
                "ok": status is not None and 200 <= status < 300,
                "error": error,
                "duplicate": duplicate,
            }
        )

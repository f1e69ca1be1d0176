"""A minimal HTTP/1.1 keep-alive POST client on asyncio + httptools, for webhook delivery.

Why not httpx for every POST: its client CPU per request and its pool scan with many
connections would make the simulator the bottleneck at thousands of webhooks per second
(figures in docs/simulator.md). This client costs far less per request. It
supports ``http://`` only; the dispatcher uses one shared ``httpx.AsyncClient`` for ``https://``
callback URLs and for the ``HEAD`` probe.
"""

from __future__ import annotations

import asyncio
from typing import cast
from urllib.parse import urlsplit

import httptools


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("connection closed before a complete response"))

    # httptools callbacks
    def on_message_complete(self) -> None:
        self.keep_alive = bool(self.parser.should_keep_alive())
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(int(self.parser.get_status_code()))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, raw: bytes, timeout_s: float) -> int:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        self.waiter = waiter
        # A timer instead of asyncio.wait_for: no extra task per request (measurably cheaper).
        timer = loop.call_later(timeout_s, self._expire, waiter)
        self.transport.write(raw)
        try:
            return await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def _expire(self, waiter: asyncio.Future[int]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError("no response in time"))
            self.close()


class RawPostClient:
    """Pooled keep-alive POSTs to ``http://`` URLs. Create and use inside one event loop."""

    def __init__(self, max_idle_per_host: int = 1024) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._max_idle = max_idle_per_host
        self._targets: dict[str, tuple[tuple[str, int], str, str]] = {}
        #: Pooled connections idle longer than this are not reused.
        self.max_idle_s = 2.0
        #: Connections opened.
        self.connects = 0

    def _target(self, url: str) -> tuple[tuple[str, int], str, str]:
        """(host, port), request target and Host header of ``url`` (cached)."""
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or parts.hostname is None:
                raise ValueError("RawPostClient supports http:// URLs only")
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            target = ((parts.hostname, parts.port or 80), path, parts.netloc)
            if len(self._targets) < 64:
                self._targets[url] = target
        return target

    async def post(
        self, url: str, body: bytes, headers: list[tuple[str, str]], timeout_s: float
    ) -> int:
        """POST ``body``; return the status code. Raises ``ConnectionError``/``TimeoutError``."""
        key, path, netloc = self._target(url)
        head = [f"POST {path} HTTP/1.1", f"Host: {netloc}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        conn = await self._acquire(key, timeout_s)
        try:
            status = await conn.request(raw, timeout_s)
        except BaseException:
            # No resend here: the receiver may have processed the request, so a failure is an
            # attempt (logged, retried by the dispatcher), never a silent duplicate.
            conn.close()
            raise
        self._release(key, conn)
        return status

    async def _acquire(self, key: tuple[str, int], timeout_s: float) -> _Connection:
        idle = self._idle.get(key)
        loop = asyncio.get_running_loop()
        now = loop.time()
        while idle:
            conn = idle.pop()
            # Connections idle for long may be closed by the server any moment (uvicorn: 5 s).
            if not conn.closed and now - conn.idle_since < self.max_idle_s:
                return conn
            conn.close()
        self.connects += 1
        _transport, conn = await asyncio.wait_for(
            loop.create_connection(_Connection, key[0], key[1]), timeout_s
        )
        return conn

    def _release(self, key: tuple[str, int], conn: _Connection) -> None:
        if conn.closed or not conn.keep_alive:
            conn.close()
            return
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self._max_idle:
            conn.close()
        else:
            conn.idle_since = asyncio.get_running_loop().time()
            idle.append(conn)

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

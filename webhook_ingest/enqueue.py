"""Durable de-dup + enqueue of webhook events onto the Celery queue ``fin.events``.

Two implementations of one small interface (:class:`Enqueuer`):

* :class:`RedisEnqueuer` (the broker is Redis): the de-dup mark and the LPUSH of the Celery
  message happen in one Lua script (``ingest_enqueue.lua``), so a crash cannot separate them. Requests
  that arrive while a round trip is in flight are *coalesced* into the next script call; each
  still awaits its own flag before its response is sent, so nothing is acknowledged before it is
  in Redis (coalescing against one write per request: docs/ingest.md).
* :class:`KombuEnqueuer` (any other broker, e.g. RabbitMQ): claim the mark in Redis, publish with
  kombu in a worker thread, then confirm the mark; see its docstring for the ordering.

Both raise :class:`BrokerUnavailableError` when the event could not be made durable within
``timeout_s``; the caller answers 503.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fin_relay.contract.errors import BrokerUnavailableError
from fin_relay.contract.names import EVENTS_QUEUE, Names
from fin_relay.contract.redisproto import INGEST_ENQUEUE, aensure_ready
from fin_relay.webhook_ingest.message import EventMessageBuilder, event_kwargs, task_id_for

__all__ = ["Enqueuer", "RedisEnqueuer", "event_kwargs", "redis_client", "task_id_for"]

log = logging.getLogger(__name__)

_NEW, _DUP, _FAILED = 1, 0, -1

#: (de-dup key, message payload, the request's future, its deadline on the loop clock)
_Entry = tuple[str, bytes, "asyncio.Future[int]", float]


def redis_client(url: str, timeout_s: float, max_connections: int = 16) -> aioredis.Redis:
    """An asyncio Redis client whose every operation is bounded by ``timeout_s``.

    The pool *waits* (up to ``timeout_s``) for a free connection instead of failing at once
    with "Too many connections": concurrent requests beyond ``max_connections`` queue briefly
    rather than being answered 503.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
    return aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 1))


class Enqueuer(Protocol):
    """What the ASGI app needs from the enqueue side."""

    async def enqueue(self, event_id: str, event_json: str | bytes, received_at_ms: int) -> bool:
        """Make the event durable unless already seen: ``True`` new, ``False`` duplicate.

        ``event_json`` is the event as JSON text or UTF-8 bytes (a verified JSON object); raises
        ``UnicodeEncodeError`` for lone surrogates, :class:`BrokerUnavailableError` on failure.
        """
        ...

    async def ping(self, timeout_s: float) -> bool:
        """Whether Redis answers within ``timeout_s``."""
        ...

    async def aclose(self) -> None: ...


class RedisEnqueuer:
    """Coalescing de-dup + LPUSH through one Lua script (Redis broker).

    Requests queue in ``_pending``; a flusher takes everything pending into one script call
    (at most ``max_batch`` events) and resolves each request's future with its flag. At most
    ``max_inflight`` script calls are in flight. Every request has a deadline ``timeout_s`` after
    it arrived: a call is bounded by the earliest deadline in its batch, requests already past
    theirs are not sent, and when a call fails the requests queued behind it fail too (Redis is
    evidently unavailable). So no request waits longer than ``timeout_s`` (plus scheduling).
    Beyond ``max_pending`` waiting requests, new ones fail fast.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        names: Names,
        *,
        ttl_s: int,
        timeout_s: float,
        max_batch: int = 512,
        max_pending: int = 20_000,
        max_inflight: int = 1,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._max_inflight = max_inflight
        # Connections held by the flushers (one per script call in flight): a pool checkout,
        # retry wrapper and release per call cost more client CPU than the call's own bytes.
        self._conns: list[Any] = []
        self._closed = False
        self._builder = EventMessageBuilder()
        self._pending: list[_Entry] = []
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dedup_prefix = names.event_dedup("")  # + event_id = names.event_dedup(event_id)

    async def enqueue(self, event_id: str, event_json: str | bytes, received_at_ms: int) -> bool:
        if len(self._pending) >= self._max_pending:
            raise BrokerUnavailableError("too many events waiting for Redis")
        if isinstance(event_json, str):
            event_json = event_json.encode()
        payload = self._builder.build_bytes(event_json, event_id, received_at_ms)
        # The loop is looked up once: on Python 3.11 get_running_loop() makes a getpid() syscall.
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        deadline = loop.time() + self._timeout_s
        self._pending.append((self._dedup_prefix + event_id, payload, fut, deadline))
        if self._inflight < self._max_inflight:
            self._inflight += 1
            task = loop.create_task(self._flush_loop())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        flag = await fut
        if flag == _FAILED:
            raise BrokerUnavailableError("Redis did not confirm the event in time")
        return flag == _NEW

    async def _flush_loop(self) -> None:
        batch: list[_Entry] = []
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                now = loop.time()
                _resolve([entry for entry in batch if entry[3] <= now], None)  # waited too long
                batch = [entry for entry in batch if entry[3] > now]
                if not batch:
                    continue
                flags = await self._run(batch, min(entry[3] for entry in batch) - now)
                _resolve(batch, flags)
                batch = []
                if flags[0] == _FAILED:
                    self._fail_pending()
        finally:
            _resolve(batch, None)  # cancelled mid-call (shutdown)
            self._inflight -= 1

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, []
        _resolve(pending, None)

    async def _run(self, batch: list[_Entry], timeout_s: float) -> list[int]:
        keys = [EVENTS_QUEUE, *(entry[0] for entry in batch)]
        payloads = [entry[1] for entry in batch]
        lengths = ",".join([str(len(payload)) for payload in payloads])
        args: list[Any] = [self._ttl_s, b"".join(payloads), lengths]
        try:
            async with asyncio.timeout(timeout_s):
                flags = await self._call_script(keys, args)
            if not isinstance(flags, list) or len(flags) != len(batch):
                raise TypeError(f"unexpected script reply {type(flags).__name__}")
            return [int(flag) for flag in flags]
        except Exception as exc:  # any failure = 503 for this batch, never a hang
            log.warning(
                "enqueue of %d event(s) failed: %s: %s", len(batch), type(exc).__name__, exc
            )
            return [_FAILED] * len(batch)

    async def _call_script(self, keys: list[str], args: list[Any]) -> Any:
        """``ingest_enqueue.lua`` on a held connection (``EVALSHA``; ``EVAL`` once when Redis
        lost its script cache).

        Before sending, the socket is checked as the pool checks one at checkout
        (:func:`~fin_relay.contract.redisproto.aensure_ready`: one Redis closed is replaced, not
        failed). Any failure, the caller's timeout included, drops the connection, so a late
        reply can never be read as another batch's; nothing is re-sent (the script may have
        run).
        """
        pool = self._client.connection_pool
        conn = self._conns.pop() if self._conns else await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await aensure_ready(conn)
            reply = await INGEST_ENQUEUE.acall_held(conn, keys, args)
        except BaseException:
            await self._drop(conn)
            raise
        if self._closed:  # a call that outlived aclose(): its connection goes back now
            await self._drop(conn)
        else:
            self._conns.append(conn)
        return reply

    async def _drop(self, conn: Any) -> None:
        """Close a held connection and give it back to the pool."""
        try:
            await conn.disconnect()
        finally:
            await self._client.connection_pool.release(conn)

    async def ping(self, timeout_s: float) -> bool:
        return await _ping(self._client, timeout_s)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._timeout_s)
        self._closed = True
        self._fail_pending()
        pool = self._client.connection_pool
        conns, self._conns = self._conns, []
        for conn in conns:
            await pool.release(conn)
        await self._client.aclose()
        await pool.disconnect()  # a pool passed to Redis() is not closed by its aclose()


def _resolve(entries: list[_Entry], flags: list[int] | None) -> None:
    """Answer each entry's request with its flag (``None``: failed)."""
    for i, entry in enumerate(entries):
        fut = entry[2]
        if not fut.done():
            fut.set_result(_FAILED if flags is None else flags[i])


async def _ping(client: aioredis.Redis, timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            return bool(await client.ping())
    except Exception:
        return False

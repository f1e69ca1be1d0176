"""Enqueue for a broker that is not Redis (e.g. RabbitMQ): Redis de-dup mark + kombu publish.

The mark and the publish cannot be one atomic step across two systems, so the order is chosen
to never lose an event, at the price of a rare duplicate (absorbed downstream: the published
envelope id is the event id):

1. *claim*: ``SET {ns}:dedup:{id} <token> NX EX claim_ttl`` (short). Taken → duplicate (200).
2. *publish* the Celery message with kombu, in a one-thread executor (kombu is blocking and not
   thread-safe), bounded by ``timeout_s``.
3. *confirm*: ``SET {ns}:dedup:{id} 1 EX ttl`` → 202.

If the publish fails or times out, the claim is released (deleted if still ours) and the answer
is 503, so Fin redelivers. If the process dies between publish and confirm, the short claim
expires and a redelivery is published again: a duplicate, never a loss. A publish that timed out
but still completed later also yields at most a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.asyncio as aioredis

from fin_relay.contract.celery_wire import CONTENT_ENCODING, CONTENT_TYPE, TaskParts
from fin_relay.contract.errors import BrokerUnavailableError
from fin_relay.contract.names import EVENTS_QUEUE, Names
from fin_relay.contract.redisproto import INGEST_RELEASE_CLAIM
from fin_relay.webhook_ingest.enqueue import _ping
from fin_relay.webhook_ingest.message import EventMessageBuilder

log = logging.getLogger(__name__)


class KombuEnqueuer:
    """De-dup in Redis, publish through kombu to ``broker_url`` (queue ``fin.events``)."""

    def __init__(
        self,
        client: aioredis.Redis,
        names: Names,
        broker_url: str,
        *,
        ttl_s: int,
        timeout_s: float,
        claim_ttl_s: int = 60,
    ) -> None:
        self._client = client
        self._names = names
        self._broker_url = broker_url
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._claim_ttl_s = max(claim_ttl_s, int(timeout_s) + 1)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fin-ingest-kombu")
        self._builder = EventMessageBuilder()
        self._producer: Any = None
        self._connection: Any = None
        self._queue: Any = None

    async def enqueue(self, event_id: str, event_json: str | bytes, received_at_ms: int) -> bool:
        parts = self._builder.parts(event_json, event_id, received_at_ms)
        key = self._names.event_dedup(event_id)
        token = uuid.uuid4().hex
        try:
            async with asyncio.timeout(self._timeout_s):
                claimed = await self._client.set(key, token, nx=True, ex=self._claim_ttl_s)
        except Exception as exc:
            raise BrokerUnavailableError(f"Redis unavailable: {type(exc).__name__}") from None
        if not claimed:
            return False
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                await loop.run_in_executor(self._executor, self._publish, parts)
                await self._client.set(key, "1", ex=self._ttl_s)
        except Exception as exc:
            log.warning("kombu publish of an event failed: %s: %s", type(exc).__name__, exc)
            await self._release_claim(key, token)
            raise BrokerUnavailableError("the broker did not accept the event in time") from None
        return True

    async def _release_claim(self, key: str, token: str) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await INGEST_RELEASE_CLAIM.acall(self._client, [key], [token])
        except Exception as exc:
            log.warning("could not release a de-dup claim: %s", type(exc).__name__)

    def _publish(self, parts: TaskParts) -> None:
        """Publish one Celery protocol-2 message (runs in the executor thread)."""
        if self._producer is None:
            kombu: Any = importlib.import_module("kombu")  # untyped; imported only on this path
            self._connection = kombu.Connection(self._broker_url, connect_timeout=self._timeout_s)
            self._producer = self._connection.Producer()
            # One Queue object for the connection's life: kombu caches declarations per entity,
            # so a new object per message would re-declare (a broker round trip) every publish.
            exchange = kombu.Exchange(EVENTS_QUEUE, type="direct")
            self._queue = kombu.Queue(EVENTS_QUEUE, exchange, routing_key=EVENTS_QUEUE)
        queue = self._queue
        try:
            self._producer.publish(
                parts.body,
                exchange=queue.exchange,
                routing_key=EVENTS_QUEUE,
                declare=[queue],
                headers=parts.headers,
                content_type=CONTENT_TYPE,
                content_encoding=CONTENT_ENCODING,
                correlation_id=parts.properties["correlation_id"],
                delivery_mode=parts.properties["delivery_mode"],
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
                timeout=self._timeout_s,
            )
        except Exception:
            self._reset()
            raise

    def _reset(self) -> None:
        conn, self._connection, self._producer = self._connection, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()

    async def ping(self, timeout_s: float) -> bool:
        return await _ping(self._client, timeout_s)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._reset)
        self._executor.shutdown(wait=False)
        await self._client.aclose()

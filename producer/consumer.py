"""Durable consumers of ``{ns}:events``, ``{ns}:results`` and ``{ns}:dead`` (consumer groups).

```python
import redis
from fin_relay.contract.names import Names
from fin_relay.producer.consumer import StreamConsumer

client = redis.Redis.from_url("redis://localhost:6379/0")
consumer = StreamConsumer(client, Names("fin"), group="billing", consumer="billing-1",
                          streams=("results", "events"))
consumer.run(lambda envelope: print(envelope.type, envelope.data), stop=threading.Event())
```

Delivery is at-least-once with duplicate suppression: a handler's success is recorded as one
atomic step (``XACK`` + the envelope id added to ``{ns}:consumed:{group}``), and an envelope
whose id is already recorded is acknowledged without calling the handler again — so a
redelivered entry, a republished envelope, or an entry reclaimed from a consumer that died
after finishing its work is processed once. Entries stuck with a dead consumer are taken over
with ``XAUTOCLAIM`` once idle for ``reclaim_idle_ms``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.names import Names
from fin_relay.contract.redisproto import text

log = logging.getLogger("fin_relay.consumer")

STREAM_ALIASES = ("events", "results", "dead")
DEFAULT_DEDUPE_TTL_S = 7 * 24 * 3600
_TRIM_EVERY = 100


def resolve_stream(names: Names, stream: str) -> str:
    """``events``/``results``/``dead`` -> the namespaced stream; full names pass through."""
    return str(getattr(names, stream)) if stream in STREAM_ALIASES else stream


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry handed to this consumer. ``envelope`` is None for an unreadable entry."""

    stream: str
    entry_id: str
    envelope: Envelope | None


def deliveries(stream: str, entries: Iterable[Any]) -> list[Delivery]:
    """Stream entries (``(id, fields)`` pairs, fields None for a deleted entry) as deliveries."""
    out = []
    for entry_id, fields in entries:
        envelope: Envelope | None = None
        if fields:
            try:
                envelope = Envelope.from_stream_fields(fields)
            except ValueError:
                log.warning("unreadable entry %s on %s: acknowledged, skipped", entry_id, stream)
        out.append(Delivery(stream, text(entry_id), envelope))
    return out


class StreamConsumer:
    """One member (``consumer``) of a consumer group (``group``) reading some streams.

    ``client`` is a sync redis-py client (``decode_responses`` either way). ``start_id`` is
    where a group created here starts: ``"0"`` (the whole retained stream) or ``"$"`` (new
    entries only).
    """

    def __init__(
        self,
        client: redis.Redis,
        names: Names,
        *,
        group: str,
        consumer: str,
        streams: Sequence[str] = ("results",),
        start_id: str = "0",
        dedupe_ttl_s: int = DEFAULT_DEDUPE_TTL_S,
    ) -> None:
        self.client = client
        self.names = names
        self.group = group
        self.consumer = consumer
        self.streams = [resolve_stream(names, s) for s in streams]
        self.start_id = start_id
        self.dedupe_ttl_s = dedupe_ttl_s
        self._consumed_key = names.consumed(group)
        self._acks = 0
        self._group_ready = False

    def ensure_group(self) -> None:
        """Create the group on every stream if missing (``MKSTREAM``: the stream may not exist)."""
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, self.group, id=self.start_id, mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._group_ready = True

    def _xreadgroup(self, last_id: str, count: int, block_ms: int | None) -> list[Delivery]:
        if not self._group_ready:
            self.ensure_group()
        reply = self.client.xreadgroup(
            self.group,
            self.consumer,
            dict.fromkeys(self.streams, last_id),
            count=count,
            block=block_ms,
        )
        out: list[Delivery] = []
        items = reply.items() if isinstance(reply, dict) else (reply or [])
        for stream, entries in items:
            batch = entries[0] if isinstance(reply, dict) else entries
            out += deliveries(text(stream), batch)
        return out

    def read(self, *, count: int = 100, block_ms: int | None = 1000) -> list[Delivery]:
        """New entries for this consumer (``XREADGROUP >``), already-processed ones dropped."""
        return self.drop_duplicates(self._xreadgroup(">", count, block_ms))

    def pending(self, *, count: int = 100) -> list[Delivery]:
        """Entries delivered to *this* consumer name and not acknowledged (e.g. before a restart)."""
        return self.drop_duplicates(self._xreadgroup("0", count, None))

    def reclaim(self, *, min_idle_ms: int, count: int = 100) -> list[Delivery]:
        """Take over entries idle for ``min_idle_ms`` in other consumers' lists (``XAUTOCLAIM``)."""
        if not self._group_ready:
            self.ensure_group()
        out: list[Delivery] = []
        for stream in self.streams:
            cursor = "0-0"
            while len(out) < count:
                reply = self.client.xautoclaim(
                    stream, self.group, self.consumer, min_idle_ms, cursor, count=count - len(out)
                )
                cursor = text(reply[0])
                out += deliveries(stream, reply[1])
                if len(reply) > 2 and reply[2]:  # Redis 7: ids deleted from the stream meanwhile
                    self.client.xack(stream, self.group, *reply[2])
                if cursor == "0-0":
                    break
        return self.drop_duplicates(out)

    def seen(self, envelope_id: str) -> bool:
        """Has this group already processed an envelope with this id?"""
        return self.client.zscore(self._consumed_key, envelope_id) is not None

    def drop_duplicates(self, batch: list[Delivery]) -> list[Delivery]:
        """Acknowledge (without handling) unreadable entries and envelopes processed before."""
        if not batch:
            return batch
        pipe = self.client.pipeline(transaction=False)
        for d in batch:
            if d.envelope is not None:
                pipe.zscore(self._consumed_key, d.envelope.id)
        scores = iter(pipe.execute())
        keep: list[Delivery] = []
        drop: list[Delivery] = []
        for d in batch:
            done = d.envelope is None or next(scores) is not None
            (drop if done else keep).append(d)
        if drop:
            self._xack(drop, mark=False)
        # the same envelope twice in one batch (a republished duplicate): keep the first
        unique: dict[str, Delivery] = {}
        for d in keep:
            envelope_id = d.envelope.id if d.envelope is not None else d.entry_id
            if envelope_id in unique:
                self._xack([d], mark=False)
            else:
                unique[envelope_id] = d
        return list(unique.values())

    def ack(self, *batch: Delivery) -> None:
        """Record ``batch`` as processed: XACK and remember the envelope ids, atomically."""
        self._xack(list(batch), mark=True)

    def _xack(self, batch: list[Delivery], *, mark: bool) -> None:
        now_ms = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=True)
        for d in batch:
            pipe.xack(d.stream, self.group, d.entry_id)
            if mark and d.envelope is not None:
                pipe.zadd(self._consumed_key, {d.envelope.id: now_ms})
        if mark:
            pipe.expire(self._consumed_key, self.dedupe_ttl_s)
            self._acks += len(batch)
            if self._acks >= _TRIM_EVERY:
                self._acks = 0
                pipe.zremrangebyscore(self._consumed_key, "-inf", now_ms - self.dedupe_ttl_s * 1000)
        pipe.execute()

    def run(
        self,
        handler: Callable[[Envelope], object],
        *,
        stop: threading.Event,
        count: int = 100,
        block_ms: int = 1000,
        reclaim_idle_ms: int = 60_000,
    ) -> int:
        """Handle entries until ``stop`` is set; return how many were handled.

        Order per round: this consumer's own pending entries (first round only), entries
        reclaimed from dead consumers, then new ones. A handler that raises leaves its entry
        pending (it is retried after ``reclaim_idle_ms``); the others are acknowledged.
        """
        handled = 0
        batch = self.pending(count=count)
        while not stop.is_set():
            batch += self.reclaim(min_idle_ms=reclaim_idle_ms, count=count)
            if not batch:
                batch = self.read(count=count, block_ms=block_ms)
            handled += self.handle(batch, handler)
            batch = []
        return handled

    def handle(self, batch: list[Delivery], handler: Callable[[Envelope], object]) -> int:
        """Call ``handler`` on each delivery, acknowledging each one as soon as it succeeded.

        (One acknowledgement per entry, not per batch: a consumer killed mid-batch leaves only
        the entries it had not finished.)
        """
        done = 0
        for d in batch:
            if d.envelope is None:
                continue
            try:
                handler(d.envelope)
            except Exception:
                log.exception("handler failed on %s %s: left pending", d.stream, d.entry_id)
                continue
            self.ack(d)
            done += 1
        return done

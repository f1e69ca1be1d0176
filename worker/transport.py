"""kombu's Redis transport with the fixes that fin-relay's delivery guarantees need.

Used for every broker connection of fin-relay's Celery app whose URL selects kombu's stock
Redis transport (``redis://``, ``rediss://``, ``redis+socket://``): :class:`TransportSelector` (Celery's ``amqp`` helper slot) gives the app
a :class:`Connection` whose :meth:`~Connection.get_transport_cls` swaps that one class for
:class:`Transport`. URL parsing, ``rediss://`` TLS defaults and the URL Celery logs stay
kombu's own (``broker_transport`` would lose both). Sentinel and RabbitMQ are left alone.

kombu 5.7.0 loses or crashes in three places when Redis goes away (docs/guarantees.md), and
takes the visibility timeout to redeliver a dead consumer's messages (4):

1. **Atomic take** (``Channel._brpop_start``/``_brpop_read``). kombu takes a message with
   ``BRPOP`` and records it in its ``unacked`` hash (``ZADD`` + ``HSET``) with a second
   command. Two windows lose the message: Redis dies between the two commands (the record
   cannot be written, kombu drops the message), or Redis persisted the pop but the ``BRPOP``
   reply never reached the worker (Redis shutting down exits without writing pending
   replies; a kill between the AOF write and the reply does the same). Here one Lua script
   takes *and* records (``_TAKE_SCRIPT``: ``LINDEX``, ``ZADD``, ``HSET``, ``RPOP``): Redis
   applies and persists all or nothing. One take hands out up to the consumer's free prefetch
   slots (at most ``TAKE_BATCH_MAX``; one without a prefetch limit), oldest first: a burst costs
   one round trip and one event-loop turn, not one per message. A reply that is
   lost leaves the records, so the messages are restored like any unacked one; sooner, in
   fact: the script also notes the tags of its last take on this channel (``inflight`` key),
   and when the channel's connection breaks with a reply outstanding, the next channel of
   the process (Celery's reconnect) puts those messages back at the head of their queue, in
   order, unless the reply had arrived. A script cannot block like ``BRPOP``: when every queue
   is empty the channel waits for the doorbell (fix 7); without one it polls again after
   0.5 ms, backing off to 1 ms while messages keep arriving and to ``IDLE_POLL_MAX_S`` (10 ms)
   once idle for 2 s (a read-only ``LINDEX`` per queue, nothing written). Not used with ``global_keyprefix`` (kombu prefixes
   only one key of ``EVALSHA``): then kombu's ``BRPOP`` with fix 2 below.

2. **Held messages** (``QoS.append``, kombu's ``BRPOP`` path only). When the unacked record
   cannot be written, the message is held in the process and pushed back to the head of its
   queue as soon as Redis answers (next channel, or kombu's periodic unacked sweep), in one
   ``MULTI``/``EXEC`` that also removes a record the failed write may have left. The error is
   re-raised, so Celery reconnects as before. Held messages still there at shutdown are
   put back or named in a CRITICAL line (``fin_relay.worker.app``).

3. **Detached channels** (``Channel._connparams``). During connection-loss handling Celery
   calls ``Connection.collect()``, which detaches the transport (``transport.client = None``);
   a channel whose ``close()`` raised on the dead socket (a pending ``BRPOP``), left open
   because the remote-control channel's ``close()`` raised next, is closed again by
   ``Connection.close()``, whose unacked restore builds a pool with ``_connparams`` reading
   ``self.connection.client.hostname``: ``AttributeError``, not a connection error, so Celery
   stops ("Unrecoverable error"). Acks of tasks finishing later take the same path. Here a
   channel keeps the parameters it was created with and uses them once detached: such calls
   succeed when Redis is back and raise a connection error (handled by Celery) while it is not.

4. **Dead consumers** (``Ownership``). kombu puts an unacked message back only after the
   visibility timeout, which must stay long (countdown retries wait unacked in the worker that
   took them): a SIGKILLed worker's messages waited an hour. Here each worker process has an
   owner id (host, pid, 64 random bits) and a lease on the broker (``unacked_owners``: owner id
   -> lease end, Redis's clock). Once the worker consumes (``enable_ownership``, from the
   heartbeat at ``worker_ready``) the take script also adds each tag to the process's owner
   set (``unacked_owner:{owner}``), and ``QoS._remove_from_indices`` (ack, reject, every
   restore) removes it with kombu's own records. The heartbeat thread calls ``keep_alive``
   every 2 s: one script renews the lease for ``LEASE_MS`` and claims the owners whose lease
   ran out (their tags move into this process's owner set, their set and lease are deleted:
   one claimant, and should it die, its own lease runs out in turn); the claimed messages go
   back to the head of their queues through kombu's ``restore_by_tag`` (a WATCH transaction:
   pushed once). A process reaps only after a whole lease of successful renewals, so after a
   Redis outage longer than a lease the live processes renew before anyone reaps. A graceful
   stop releases the lease (``release_ownership``).

5. **Order at the take** (``fin_relay_namespace`` transport option). Not a kombu defect but
   fin-relay's order guarantee: the take script also numbers each call job of a conversation
   as it hands it out (``INCR`` of the conversation's counter, kept in the job hash so a
   redelivery keeps its number), reading the message with ``celery_wire.lua``. A FIFO queue
   then gives numbers in the order the broker received the jobs, whoever sent them. The number
   is added to the delivery as the ``fin_relay_seq`` header (``celery_wire.SEQ_HEADER``).

6. **The ack rides with the outcome** (``ack_commands``, ``acked_with_outcome``). When the
   broker is the worker's Redis, the transaction recording a call's outcome or publishing an
   event also removes the message's unacked records; the ack after the task then only does
   kombu's in-memory bookkeeping. Not a kombu defect: one round trip and one transaction fewer
   per job.

7. **A doorbell instead of busy polling** (``_Doorbell``). The take cannot block (fix 1), so
   a worker polled its empty queues every 0.5–1 ms while messages kept arriving: most takes
   found nothing, and each cost an event-loop turn and a round trip. Here the event loop also
   reads one more connection, on which Redis reports every write to a consumed queue (``CLIENT
   TRACKING ... BCAST PREFIX <queue>``, Redis 6+): an empty take waits for that ring, and takes
   at once when one came while the take was out. Nothing is taken or recorded through it, so
   it changes when the worker takes, never what: a missed ring costs at most
   ``DOORBELL_SAFETY_POLL_S`` (100 ms). Where Redis refuses key tracking (older than 6,
   ``CLIENT`` denied) the worker polls as before; a lost doorbell connection is replaced
   within ``DOORBELL_RETRY_S``, polling meanwhile.

Not a fix but a cost: kombu builds a new ``redis.Redis`` client object for every ack (and
every other command it sends outside the consuming connection), a third of the per-message
CPU it spends in a busy worker. ``Channel.conn_or_acquire`` here reuses one client per
connection pool (clients are thread-safe; the pool and its connections are kombu's as before).

Verified against kombu 5.7 (``KOMBU_VERIFIED``; ``tests/worker/test_transport.py`` fails on
another version, so an upgrade re-checks these overrides and re-runs
``tests/reliability/test_redis_restart.py``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from queue import Empty
from typing import Any, Generic, TypeVar

import kombu
import kombu.transport.redis
import kombu.transport.virtual
import kombu.utils.encoding
import kombu.utils.json
import redis
from celery.app.amqp import AMQP as CeleryAMQP

from fin_relay.contract import celery_wire, names, redisproto
from fin_relay.contract.conversation import STATE_TTL_S

# kombu is only partly typed: its Redis transport is used as untyped.
kombu_redis: Any = kombu.transport.redis
kombu_virtual: Any = kombu.transport.virtual
dumps: Any = kombu.utils.json.dumps
loads: Any = kombu.utils.json.loads
bytes_to_str: Any = kombu.utils.encoding.bytes_to_str
KombuConnection: Any = kombu.Connection  # type: ignore[attr-defined]

log = logging.getLogger("fin_relay.worker.transport")

_T = TypeVar("_T")

#: kombu (major, minor) versions these overrides were checked against, line by line.
KOMBU_VERIFIED = ((5, 7),)

#: Empty-queue polling of the atomic take: first retry after the minimum, doubling to a cap:
#: ``BUSY_POLL_MAX_S`` while messages arrived in the last ``BUSY_WINDOW_S`` (a loaded worker
#: sees its queues empty between messages: it should not add latency there), else
#: ``IDLE_POLL_MAX_S`` (an idle worker polls ~100 times per second, not ~330).
IDLE_POLL_MIN_S = 0.0005
BUSY_POLL_MAX_S = 0.001
BUSY_WINDOW_S = 2.0
IDLE_POLL_MAX_S = 0.01

#: Redis's channel of key invalidations (``CLIENT TRACKING ... REDIRECT``, RESP2).
INVALIDATE_CHANNEL = "__redis__:invalidate"
#: After the doorbell could not be set up or broke, try again at most this often.
DOORBELL_RETRY_S = 1.0
#: With the doorbell, an empty take is still repeated after this long: a bound on the wait
#: should a ring ever be missed. Nothing else needs it (a take that a ring raced is repeated at
#: once, an ack that frees a prefetch slot wakes the loop), so it is long: an idle worker runs
#: 10 takes per second, not 100 (measured: 1% of a core against 6% at 10 ms).
DOORBELL_SAFETY_POLL_S = 0.1

#: At most this many messages per take (bounded by the consumer's free prefetch slots): one
#: round trip and one event-loop turn for a burst, and the script stays well under a
#: millisecond of Redis time.
TAKE_BATCH_MAX = 8


#: Called with (queue, item) for a queue item that is not a kombu message (no delivery tag)
#: instead of handing it to kombu, which raises and stops the worker. fin-relay's worker sets it
#: (dead letter); ``None``: kombu's behaviour.
on_undecodable_item: Callable[[str, Any], Any] | None = None


def kombu_version() -> str:
    return ".".join(str(part) for part in kombu.VERSION[:3])


def kombu_verified() -> bool:
    return tuple(kombu.VERSION[:2]) in KOMBU_VERIFIED


# --- fix 1: atomic take ----------------------------------------------------------------------

#: The take (``redisproto/broker_take.lua``, ``celery_wire.lua`` prepended): its KEYS, ARGV and
#: reply are documented there.
_TAKE_SCRIPT = redisproto.BROKER_TAKE.source
_TAKE_SHA = redisproto.BROKER_TAKE.sha


@dataclass
class _Orphan:
    """The inflight key of a channel whose connection broke with a take outstanding."""

    key: str
    last_received: str | None  # the tags of the last take whose reply this process did read


class _Pending(Generic[_T]):
    """A process-wide list shared by the consumer and pool threads: what is still to put back."""

    def __init__(self) -> None:
        self._items: list[_T] = []
        self._lock = threading.Lock()

    def add(self, item: _T) -> None:
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[_T]:
        with self._lock:
            return list(self._items)

    def take_all(self) -> list[_T]:
        with self._lock:
            batch, self._items = self._items, []
        return batch

    def put_back(self, batch: list[_T]) -> None:
        """Return what could not be handled yet, ahead of what arrived meanwhile."""
        with self._lock:
            self._items[:0] = batch


_orphans: _Pending[_Orphan] = _Pending()


# --- fix 2: held messages (kombu's BRPOP path) -----------------------------------------------


@dataclass
class HeldMessage:
    """A message taken from its queue whose unacked record could not be written."""

    payload: dict[str, Any]  # kombu's raw message, as BRPOP returned it
    exchange: str
    routing_key: str
    delivery_tag: str

    def describe(self) -> str:
        headers = self.payload.get("headers") or {}
        # task name and id only: never the arguments (customer data)
        return f"{headers.get('task', '?')}[{headers.get('id', self.delivery_tag)}]"


_held: _Pending[HeldMessage] = _Pending()


def held_messages() -> list[HeldMessage]:
    """The messages this process holds for a Redis that did not answer (a copy)."""
    return _held.snapshot()


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    def append(self, message: Any, delivery_tag: str) -> None:
        recorded = self.channel._recorded
        if delivery_tag in recorded:
            # the take script already wrote the unacked record: in-memory bookkeeping only
            recorded.discard(delivery_tag)
            kombu_virtual.QoS.append(self, message, delivery_tag)
            return
        try:
            super().append(message, delivery_tag)
        except Exception as exc:
            # The message is off its queue (BRPOP) but not in the unacked hash: without this,
            # it would exist only here and be dropped with the connection.
            info = message.delivery_info
            held = HeldMessage(message._raw, info["exchange"], info["routing_key"], delivery_tag)
            _held.add(held)
            log.warning(
                "broker write failed right after %s was taken from its queue (%r): kept in "
                "memory, put back on the queue when Redis answers",
                held.describe(),
                exc,
            )
            raise

    # Acks come from the pool threads (``Transport.THREAD_SAFE_ACKS``): kombu's ack and reject,
    # plus a wake-up of the event loop when the ack frees the prefetch slot it waits for.

    def ack(self, delivery_tag: str) -> None:
        if not _acked_with_outcome(delivery_tag):
            self._remove_from_indices(delivery_tag).execute()
        self._settled(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if _acked_with_outcome(delivery_tag):
            pass  # its outcome is recorded: nothing to put back
        elif requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        else:
            self._remove_from_indices(delivery_tag).execute()
        self._settled(delivery_tag)

    def _settled(self, delivery_tag: str) -> None:
        # Only the event loop adds to _delivered (one take at a time); a slot freed while it
        # was full, or one take from full, may be what the loop is waiting for (it sends no
        # take while it is full, and nothing else would wake it before its next timer).
        pcount = self.prefetch_count
        near_full = pcount and len(self._delivered) - len(self._dirty) >= pcount - 1
        kombu_virtual.QoS.ack(self, delivery_tag)  # _dirty.add: atomic
        if near_full:
            self.channel.connection.wake_loop()

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        # kombu's ack, reject and every restore (restore_by_tag) come here: the tag leaves this
        # process's owner set in the same pipeline / MULTI as kombu's records (fix 4)
        pipe = super()._remove_from_indices(delivery_tag, pipe)
        owner_key = self.channel.owner_key
        if owner_key is not None:
            pipe.srem(owner_key, delivery_tag)
        return pipe

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        # kombu's periodic unacked sweep (every unacked_restore_interval s) also puts back
        # what this process holds, in case no new channel is created once Redis answers.
        self.channel.restore_held()
        return super().restore_visible(*args, **kwargs)


# --- the ack sent with the job's outcome ----------------------------------------------------
#
# A task's outcome (a call's, an event's publication) is one MULTI/EXEC on the worker's Redis;
# kombu's ack is another round trip right after the task returns. When the broker is that same
# Redis, the outcome's transaction also removes the message's unacked records (``ack_commands``), and the ack that
# follows only does kombu's in-memory bookkeeping. Both orders are safe: a record removed with
# the outcome is a job that is done (a redelivery would find its outcome), and a record left
# (the transaction failed) is acked or put back as before.

#: Tags whose records an outcome transaction removed; QoS.ack/reject consume them.
_acked_ahead: set[str] = set()
#: The channel whose keys the ack commands name (any channel of the process: the unacked keys
#: and the owner set are per process), set by a channel that takes atomically.
_ack_channel: weakref.ReferenceType[Channel] | None = None


def _server(params: dict[str, Any]) -> tuple[Any, ...]:
    return (
        params.get("path") or params.get("host"),
        params.get("port"),
        int(params.get("db") or 0),
    )


def ack_commands(delivery_tag: str, client: redis.Redis) -> list[tuple[Any, ...]] | None:
    """The commands that acknowledge ``delivery_tag`` (what ``QoS.ack`` would send), for a
    caller that runs them in its own transaction on ``client`` and then calls
    :func:`acked_with_outcome`; ``None`` when ``client`` is not the broker's Redis or this
    process takes no messages atomically (kombu acks as usual)."""
    channel = _ack_channel() if _ack_channel is not None else None
    if channel is None or not channel.atomic_take or not delivery_tag:
        return None
    params = channel._attached_params.get(False)
    if params is None or _server(params) != _server(client.connection_pool.connection_kwargs):
        return None
    commands: list[tuple[Any, ...]] = [
        ("ZREM", channel.unacked_index_key, delivery_tag),
        ("HDEL", channel.unacked_key, delivery_tag),
    ]
    owner_key = channel.owner_key
    if owner_key is not None:
        commands.append(("SREM", owner_key, delivery_tag))
    return commands


def acked_with_outcome(delivery_tag: str) -> None:
    """The transaction holding :func:`ack_commands` committed: the coming ack or reject
    of ``delivery_tag`` leaves Redis alone."""
    _acked_ahead.add(delivery_tag)


def _acked_with_outcome(delivery_tag: str) -> bool:
    try:
        _acked_ahead.remove(delivery_tag)
    except KeyError:
        return False
    return True


class _Doorbell:
    """A connection that Redis rings on every write to the consumed queues.

    ``CLIENT TRACKING ON REDIRECT <its own id> BCAST PREFIX <queue> ...`` then ``SUBSCRIBE
    __redis__:invalidate``: Redis sends this connection one invalidation message per write to a
    key starting with a consumed queue's name (a producer's push, a restore, a take). Works
    with RESP2 and RESP3, and dies with its socket: nothing else is left tracked."""

    def __init__(self, pool: Any, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes
        self.rings = 0
        self.conn = pool.connection_class(**pool.connection_kwargs)  # its own socket, not pooled
        try:
            self.conn.connect()
            self.conn.send_command("CLIENT", "ID")
            client_id = int(self.conn.read_response())
            args: list[Any] = ["CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST"]
            for prefix in prefixes:
                args += ["PREFIX", prefix]
            self.conn.send_command(*args)
            self.conn.read_response()
            self.conn.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
            self.conn.read_response(push_request=True)  # RESP3: a push; RESP2: a reply
        except BaseException:
            self.conn.disconnect()
            raise
        # the number the event loop knows it by, also once a failed read closed the socket
        self.fd = int(self.conn._sock.fileno())

    def drain(self) -> bool:
        """Count every message that arrived; ``False`` when the connection is gone."""
        try:
            while self.conn.can_read(timeout=0):
                self.conn.read_response(push_request=True)
                self.rings += 1
            return True
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def close(self) -> None:
        self.conn.disconnect()


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS

    #: Fix 1 on (off: kombu's BRPOP, with fix 2; tests use it to reach that path).
    ATOMIC_TAKE = True

    #: Fix 5: the fin-relay namespace whose call jobs the take numbers (transport option
    #: ``fin_relay_namespace``; ``None``: no numbering). ``fin_relay_state_ttl`` is the TTL (s)
    #: of the counters and job hashes the take writes.
    fin_relay_namespace: str | None = None
    fin_relay_state_ttl: int = 0
    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        "fin_relay_namespace",
        "fin_relay_state_ttl",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # parameters computed while attached to the transport, per ``asynchronous`` (fix 3)
        self._attached_params: dict[bool, dict[str, Any]] = {}
        self._recorded: set[str] = set()  # tags whose unacked record the take script wrote
        self._last_received: str | None = None
        self._inflight_key = ""
        self._shared_client: Any = None  # see conn_or_acquire
        self._idle_polls = 0
        self._take_after = 0.0
        self._last_message_at = float("-inf")
        self.atomic_take = False
        self._atomic_poll = False  # whether the outstanding poll is a take (else kombu's BRPOP)
        self._no_ack_tags: set[str] = set()  # consumers without acks: see _brpop_start
        self._endpoint: _Endpoint | None = None  # fix 4: set when takes can be owned
        self._doorbell: _Doorbell | None = None  # fix 7
        self._doorbell_loop: Any = None
        self._doorbell_usable = True  # False once Redis refused key tracking
        self._doorbell_retry_at = 0.0
        self._rings_at_take = -1  # the doorbell's count when the outstanding take was sent
        super().__init__(*args, **kwargs)  # connects (PING): Redis answers
        self._connparams(asynchronous=False)  # remember the sync pool's parameters too
        self.atomic_take = self.ATOMIC_TAKE and not self.global_keyprefix
        self._inflight_key = f"{self.unacked_key}_inflight:{uuid.uuid4().hex}"
        self._inflight_ttl_ms = max(1, int(self.visibility_timeout * 1000))
        if self.atomic_take:
            self._endpoint = ownership().register(self)
            global _ack_channel
            _ack_channel = weakref.ref(self)
        self._numbering_args = self._numbering()
        self.restore_held()

    def _numbering(self) -> list[str | int]:
        """The take script's numbering ARGV (fix 5): off without a namespace."""
        ns = self.fin_relay_namespace
        if not ns:
            return ["", "", "", 0, ""]
        keys = names.Names(ns)
        marker = "\x00"
        prefix, suffix = keys.conversation_seq(marker).split(marker)
        ttl = self.fin_relay_state_ttl or STATE_TTL_S
        return [keys.job(""), prefix, suffix, ttl, " ".join(names.CALL_TASKS.values())]

    @property
    def owner_key(self) -> str | None:
        """This process's owner set on this channel's broker (fix 4), or None."""
        return self._endpoint.owner_key() if self._endpoint is not None else None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """kombu's, minus a new ``redis.Redis`` per call: one client per pool, reused."""
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self._pool:
            with _client_lock:  # pool threads ack through it too: one pool, one client
                shared = self._shared_client
                if shared is None or shared.connection_pool is not self._pool:
                    shared = self._shared_client = self._create_client()  # (re)creates the pool
        yield shared

    # fix 3: detached channels

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is None or transport.client is None:
            # Detached by Connection.collect()/close(): kombu would raise AttributeError.
            params = self._attached_params.get(asynchronous)
            if params is None:
                raise kombu_redis.get_redis_ConnectionError()(
                    "the broker connection of this channel is closed"
                )
            return dict(params)
        attached: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        self._attached_params[asynchronous] = dict(attached)
        return attached

    # fix 1: atomic take

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_tags.add(str(kwargs.get("consumer_tag", args[1] if args[1:] else "")))
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        self._no_ack_tags.discard(consumer_tag)
        return super().basic_cancel(consumer_tag)

    def _brpop_start(self, timeout: float | None = None) -> None:
        # The take records every message as unacked; a consumer without acks (Celery's
        # control replies) never acks it, so a channel with one polls kombu's way.
        self._atomic_poll = self.atomic_take and not self._no_ack_tags
        if not self._atomic_poll:
            super()._brpop_start(timeout)
            return
        wait_s = self._take_after - time.monotonic()
        if wait_s > 0:
            if not self.connection.cycle._in_protected_read:
                return  # event loop: a timer (Transport.on_idle_poll) brings it back
            time.sleep(wait_s)  # drain_events() without an event loop: wait here instead
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        self._ring_check()
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        endpoint = self._endpoint
        owner_key = endpoint.owner_key() if endpoint is not None and endpoint.records() else None
        self.client.connection.send_command(
            "EVALSHA",
            _TAKE_SHA,
            4 + len(keys),
            self.unacked_index_key,
            self.unacked_key,
            self._inflight_key,
            owner_key or self._inflight_key,  # a placeholder when not recorded: not touched
            *keys,
            repr(time.time()),
            self._inflight_ttl_ms,
            "1" if owner_key else "0",
            *self._numbering_args,
            self._take_limit(),
        )

    def _ring_check(self) -> None:
        """Before a take (fix 7): have the doorbell ring for the consumed queues, and note its
        count. Without an event loop (``drain_events()``), or where Redis refuses key tracking,
        empty queues are polled as before."""
        self._rings_at_take = -1
        loop = getattr(self.connection, "_loop", None)
        if not self._doorbell_usable or loop is None:
            return
        prefixes = _prefixes(self.active_queues)
        bell = self._doorbell
        if bell is not None and bell.prefixes != prefixes:
            self._drop_doorbell()  # queues added or cancelled: track the new set
            bell = None
        if bell is None:
            if time.monotonic() < self._doorbell_retry_at:
                return
            try:
                bell = _Doorbell(self.pool, prefixes)
            except redis.ResponseError as exc:  # Redis < 6, CLIENT renamed, or denied (ACL)
                log.info("broker: no key tracking (%s): empty queues are polled", exc)
                self._doorbell_usable = False
                return
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.info("broker: doorbell connection failed (%s): polling meanwhile", exc)
                self._doorbell_retry_at = time.monotonic() + DOORBELL_RETRY_S
                return
            loop.add_reader(bell.fd, self._on_ring)
            self._doorbell, self._doorbell_loop = bell, loop
        self._rings_at_take = bell.rings

    def _on_ring(self) -> None:
        """The doorbell's socket is readable: a consumed queue was written to; take now."""
        bell = self._doorbell
        if bell is not None and not bell.drain():
            log.info("broker: doorbell connection lost: polling until it is back")
            self._drop_doorbell()
            self._doorbell_retry_at = time.monotonic() + DOORBELL_RETRY_S
        self._take_after = 0.0

    def _drop_doorbell(self) -> None:
        bell, loop = self._doorbell, self._doorbell_loop
        self._doorbell = self._doorbell_loop = None
        if bell is None:
            return
        if loop is not None:
            loop.remove_reader(bell.fd)
        bell.close()

    def close(self) -> None:
        self._drop_doorbell()
        super().close()

    def _take_limit(self) -> int:
        """How many messages one take may hand out: the consumer's free prefetch slots, at
        most ``TAKE_BATCH_MAX``; 1 without a prefetch limit (kombu's BRPOP takes one)."""
        if not self.qos.prefetch_count:
            return 1
        return max(1, min(TAKE_BATCH_MAX, self.qos.can_consume_max_estimate() or 1))

    def _brpop_read(self, **options: Any) -> bool:
        if not self._atomic_poll:
            read: bool = super()._brpop_read(**options)
            return read
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "EVALSHA", **options)
            except self.connection_errors:
                # the reply is lost with the connection: _on_connection_disconnect notes it
                self.client.connection.disconnect()
                raise
            except redis.exceptions.NoScriptError:
                with self.conn_or_acquire() as client:  # new or restarted Redis: load it
                    client.script_load(_TAKE_SCRIPT)
                raise Empty() from None
            if not reply:
                self._idle_polls += 1
                now = time.monotonic()
                busy = now - self._last_message_at < BUSY_WINDOW_S
                cap = BUSY_POLL_MAX_S if busy else IDLE_POLL_MAX_S
                delay_s = min(cap, IDLE_POLL_MIN_S * 2 ** min(self._idle_polls - 1, 16))
                bell = self._doorbell
                if bell is not None and self._rings_at_take >= 0:
                    # fix 7: a write after the script ran rings the doorbell; one that rang
                    # while this take was out may have come after it: take again at once
                    rang = bell.rings != self._rings_at_take
                    delay_s = 0.0 if rang else DOORBELL_SAFETY_POLL_S
                self._take_after = now + delay_s
                self.connection.on_idle_poll(delay_s)
                raise Empty()
            self._idle_polls = 0
            self._take_after = 0.0
            self._last_message_at = time.monotonic()
            return self._deliver_taken([reply[i : i + 4] for i in range(0, len(reply), 4)])
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _deliver_taken(self, taken: list[list[Any]]) -> bool:
        """Hand each message of one take to kombu, oldest first. Should delivering one raise,
        the recorded messages after it go back to the head of their queue, in order, before
        the error propagates (nothing else would deliver them before the visibility
        timeout)."""
        messages = [
            (dest, item, loads(bytes_to_str(item)) if recorded else None, seq)
            for dest, item, recorded, seq in taken
        ]
        tags = [payload["properties"]["delivery_tag"] for _, _, payload, _ in messages if payload]
        if tags:
            self._last_received = " ".join(tags)  # the inflight key's value: this reply arrived
            self._recorded.update(tags)
        delivered = False
        for n, (dest, item, payload, seq) in enumerate(messages):
            try:
                delivered = self._deliver_one(dest, item, payload, seq) or delivered
            except BaseException:
                rest = [p["properties"]["delivery_tag"] for _, _, p, _ in messages[n + 1 :] if p]
                for tag in reversed(rest):
                    self._recorded.discard(tag)
                    self.qos.restore_by_tag(tag)
                raise
        if not delivered:
            raise Empty()
        return True

    def _deliver_one(self, dest: Any, item: Any, payload: dict[str, Any] | None, seq: int) -> bool:
        """One message of a take; ``payload`` is ``None`` for an item that is no kombu message."""
        if payload is None:
            if on_undecodable_item is None:
                payload = loads(bytes_to_str(item))  # kombu's behaviour: it raises below
            else:
                # No kombu delivery tag (raw text, a JSON list, an object without
                # properties, pushed by hand): kombu would crash the worker on it
                # ("Unrecoverable error"). It was taken off the queue; the worker makes it a
                # dead letter instead.
                on_undecodable_item(bytes_to_str(dest).rsplit(self.sep, 1)[0], item)
                return False
        if seq and isinstance(payload.get("headers"), dict):
            # the number travels with this delivery: the worker's Redis may be another than
            # the broker's (FIN_BROKER_URL), where the job hash holds it
            payload["headers"][celery_wire.SEQ_HEADER] = int(seq)
        dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(dest)
        self.connection._deliver(payload, dest)
        return True

    def _on_connection_disconnect(self, connection: Any) -> None:
        if self._atomic_poll and self._in_poll is not None and self._in_poll is connection:
            # A take was outstanding: its reply is lost. The next channel checks what Redis
            # noted for this key; this channel continues with a new key.
            _orphans.add(_Orphan(self._inflight_key, self._last_received))
            self._inflight_key = f"{self.unacked_key}_inflight:{uuid.uuid4().hex}"
        super()._on_connection_disconnect(connection)

    # putting back what Redis could not be told about (fixes 1 and 2)

    def restore_held(self) -> int:
        """Put back held messages and messages of lost take replies; -> how many."""
        return self._restore_orphans() + self._restore_held()

    def _restore_orphans(self) -> int:
        batch = _orphans.take_all()
        if not batch:
            return 0
        done, restored = 0, 0
        try:
            with self.conn_or_acquire() as client:
                for orphan in batch:
                    tags = bytes_to_str(client.get(orphan.key) or "")
                    if tags and tags != orphan.last_received:
                        # popped and recorded by the script, reply never read: back to the
                        # head of their queue, oldest at the head (a no-op for one already
                        # restored or acked)
                        for tag in reversed(tags.split()):
                            self.qos.restore_by_tag(tag, client)
                            restored += 1
                            log.warning(
                                "the reply taking message %s was lost with the broker "
                                "connection: put it back on its queue",
                                tag,
                            )
                    client.delete(orphan.key)
                    done += 1
        except Exception as exc:
            _orphans.put_back(batch[done:])
            log.debug("%d lost take reply(ies) not checked yet: %r", len(batch) - done, exc)
        return restored

    def _restore_held(self) -> int:
        batch = _held.take_all()
        if not batch:
            return 0
        done = 0
        try:
            with self.conn_or_acquire() as client:
                for held in batch:
                    self._restore_held_one(client, held)
                    done += 1
        except Exception as exc:
            _held.put_back(batch[done:])
            log.debug("%d held message(s) not put back yet: %r", len(batch) - done, exc)
        if done:
            log.warning(
                "put %d held message(s) back on their queue: %s",
                done,
                ", ".join(h.describe() for h in batch[:done]),
            )
        return done

    def _restore_held_one(self, client: Any, held: HeldMessage) -> None:
        queues = self._lookup(held.exchange, held.routing_key)
        priority = self._get_message_priority(held.payload, reverse=False)
        body = dumps(held.payload)
        with client.pipeline() as pipe:  # MULTI/EXEC: exactly one copy, wherever it was
            # the failed append may have reached Redis before the connection broke
            self.qos._remove_from_indices(held.delivery_tag, pipe)
            for queue in queues:
                # RPUSH: BRPOP takes from the right, so it is the next message delivered
                pipe.rpush(self._q_for_pri(queue, priority), body)
            pipe.execute()


_client_lock = threading.Lock()


def _prefixes(queues: Any) -> tuple[str, ...]:
    """The consumed queues' names as tracking prefixes, none a prefix of another (Redis
    refuses overlapping prefixes; a priority step's key starts with its queue's name)."""
    out: list[str] = []
    for name in sorted(set(queues)):
        if not any(name.startswith(p) for p in out):
            out.append(name)
    return tuple(out)


def _wake() -> None:
    """A timer callback doing nothing: firing it makes the event loop poll the queues."""


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel

    #: Acks and rejects may be sent from any thread (fin-relay's consumer then sends them from
    #: the pool thread that ran the task instead of queueing them on the event loop: see
    #: ``offcontract.Consumer.call_soon_ack``).
    THREAD_SAFE_ACKS = True

    _loop: Any = None

    def wake_loop(self) -> None:
        """Make the event loop poll again now (thread-safe; a no-op without a loop)."""
        if self._loop is not None:
            self._loop.call_soon(_wake)

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        self._loop = loop

    def on_idle_poll(self, delay_s: float) -> None:
        """Every queue was empty: make the event loop come back in ``delay_s``."""
        if self._loop is not None:
            self._loop.call_later(delay_s, _wake)


def lost_take_replies() -> int:
    """How many lost take replies this process has not checked yet (fix 1)."""
    return len(_orphans.snapshot())


def pending_put_backs() -> int:
    """How many held messages and unchecked lost take replies this process has."""
    return len(held_messages()) + lost_take_replies()


def restore_held_messages(connection: Any) -> None:
    """Put back held messages and messages of lost take replies through ``connection`` (a
    kombu Connection)."""
    if pending_put_backs():
        connection.channel().close()  # a new channel puts back what it can (Channel.__init__)


# --- fix 4: a dead consumer's messages ------------------------------------------------------

#: A worker process's lease on its broker lasts this long after its last renewal (Redis's clock,
#: so the hosts' clocks do not matter). The heartbeat thread renews it every 2 s
#: (``heartbeat.INTERVAL_S``); a lease that ran out marks the process dead.
LEASE_MS = 10_000
#: New takes are recorded as owned only while the last renewal is younger than this: a process
#: whose renewals stall (its lease may run out while it lives) stops adding to what would be
#: put back under it; those messages keep kombu's visibility timeout.
FRESH_RENEWAL_S = LEASE_MS / 2000
#: At most this many dead owners are claimed per keep-alive (the rest at the next one). A
#: process reaps only after renewing its own lease without a failure for a whole lease: after
#: a broker outage longer than a lease, every live process has renewed before anyone reaps.
REAP_BATCH = 16
#: Socket timeouts of the keep-alive client: a Redis that hangs must not stall the heartbeat.
KEEPALIVE_TIMEOUT_S = 3.0

#: Renew this process's lease, claiming dead owners (``redisproto/broker_keep_alive.lua``).
_KEEP_ALIVE_SCRIPT = redisproto.BROKER_KEEP_ALIVE.source
_KEEP_ALIVE_SHA = redisproto.BROKER_KEEP_ALIVE.sha

#: A process stopping gracefully: no lease left behind (``redisproto/broker_release.lua``).
_RELEASE_SCRIPT = redisproto.BROKER_RELEASE.source


def new_owner_id() -> str:
    """Unique per process, across hosts and restarts: host name and pid (readable in logs)
    plus 64 random bits (Celery node names given with ``-n`` may collide, containers all run
    as pid 1, and a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


@dataclass
class Claim:
    """A dead owner whose unacked messages a keep-alive claimed to put back."""

    owner: str
    lease_ended_ms: int  # 0: released at a graceful stop
    now_ms: int
    tags: list[str]

    def describe(self) -> str:
        if self.lease_ended_ms <= 0:
            return f"worker process {self.owner} stopped"
        ago_s = (self.now_ms - self.lease_ended_ms) / 1000 + LEASE_MS / 1000
        return f"worker process {self.owner} stopped renewing its lease {ago_s:.1f} s ago"


class _Endpoint:
    """One broker this process takes messages from (a Redis server and kombu's unacked key),
    its lease there, and the client that renews it."""

    def __init__(self, owner: Ownership, params: dict[str, Any], unacked_key: str) -> None:
        self.ownership = owner
        self.unacked_key = unacked_key
        self.owners_key = names.broker_owners(unacked_key)
        self.owner_prefix = names.broker_owner("", unacked_key)
        # kombu's synchronous pool parameters, with timeouts: the heartbeat thread uses it
        self.params = {
            **params,
            "socket_timeout": KEEPALIVE_TIMEOUT_S,
            "socket_connect_timeout": KEEPALIVE_TIMEOUT_S,
            "max_connections": None,
        }
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()
        self.client: Any = None
        self.renewed_at = float("-inf")  # monotonic, taken before the renewal was sent
        self.healthy_since: float | None = None
        self.claimed: _Pending[str] = _Pending()  # tags claimed and not put back yet

    def owner_key(self) -> str | None:
        owner = self.ownership.current_owner()
        return names.broker_owner(owner, self.unacked_key) if owner else None

    def records(self) -> bool:
        """Whether a take now records its tag under this process's owner id."""
        return self.ownership.active() and time.monotonic() - self.renewed_at < FRESH_RENEWAL_S

    def connect(self) -> Any:
        if self.client is None:
            self.client = redis.Redis(connection_pool=redis.ConnectionPool(**self.params))
        return self.client

    def live_channel(self) -> Any:
        for channel in list(self.channels):
            if not channel.closed:
                return channel
        return None


class Ownership:
    """Which unacked messages each live worker process holds, so that a dead one's come back
    at once instead of after the visibility timeout (fix 4).

    Off until :meth:`enable` (the worker's heartbeat calls it once it consumes): a process
    that never renews a lease must not record takes under one, or they would be put back
    while it works on them. One per process: a forked child starts with a fresh, disabled one.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.owner_id: str | None = None
        self.enabled = False
        self._endpoints: dict[tuple[Any, ...], _Endpoint] = {}
        self._lock = threading.Lock()

    def current_owner(self) -> str | None:
        return self.owner_id if self.pid == os.getpid() else None

    def active(self) -> bool:
        return self.enabled and self.pid == os.getpid()

    def endpoints(self) -> list[_Endpoint]:
        with self._lock:
            return list(self._endpoints.values())

    def register(self, channel: Any) -> _Endpoint:
        params = channel._attached_params[False]
        where = tuple(repr(params.get(k)) for k in ("host", "port", "path", "db", "username"))
        ident = (*where, channel.unacked_key)
        with self._lock:
            endpoint = self._endpoints.get(ident)
            new = endpoint is None
            if endpoint is None:
                endpoint = self._endpoints[ident] = _Endpoint(self, params, channel.unacked_key)
            endpoint.channels.add(channel)
        if new and self.active():
            self._renew(endpoint, reap=False)  # a lease before this broker's first owned take
        return endpoint

    def enable(self) -> str:
        """Record takes under a lease from now on; renew it on every broker known; -> id."""
        if self.owner_id is None:
            self.owner_id = new_owner_id()
        self.enabled = True
        for endpoint in self.endpoints():
            self._renew(endpoint, reap=False)
        return self.owner_id

    def keep_alive(self, *, reap: bool = True) -> int:
        """Renew this process's leases; unless ``reap`` is false, claim dead owners' messages
        and put them back at the head of their queues; -> how many were put back."""
        if not self.active():
            return 0
        restored = 0
        for endpoint in self.endpoints():
            restored += self._put_back(endpoint, self._renew(endpoint, reap=reap))
        return restored

    def release(self) -> None:
        """Stopping gracefully (after kombu put back or acked what it held): drop the lease."""
        if not self.active():
            return
        self.enabled = False
        assert self.owner_id is not None
        for endpoint in self.endpoints():
            if endpoint.client is None:
                continue
            try:
                left = endpoint.client.eval(
                    _RELEASE_SCRIPT,
                    2,
                    endpoint.owners_key,
                    names.broker_owner(self.owner_id, endpoint.unacked_key),
                    self.owner_id,
                )
                if left:
                    log.info("%d unacked message(s) left for another worker to put back", left)
            except redis.RedisError as exc:
                log.warning("broker lease not released (it runs out by itself): %s", exc)
            endpoint.client.close()
            endpoint.client = None

    def _renew(self, endpoint: _Endpoint, *, reap: bool) -> list[Claim]:
        assert self.owner_id is not None
        sent_at = time.monotonic()
        healthy = endpoint.healthy_since is not None and (
            sent_at - endpoint.healthy_since >= LEASE_MS / 1000
        )
        args = (
            2,
            endpoint.owners_key,
            names.broker_owner(self.owner_id, endpoint.unacked_key),
            self.owner_id,
            endpoint.owner_prefix,
            LEASE_MS,
            REAP_BATCH if reap and healthy else 0,
        )
        try:
            client = endpoint.connect()
            try:
                reply = client.evalsha(_KEEP_ALIVE_SHA, *args)
            except redis.exceptions.NoScriptError:
                client.script_load(_KEEP_ALIVE_SCRIPT)
                reply = client.evalsha(_KEEP_ALIVE_SHA, *args)
        except redis.RedisError as exc:
            if endpoint.healthy_since is not None:
                log.warning("broker lease not renewed (retried every heartbeat): %s", exc)
            endpoint.healthy_since = None
            return []
        endpoint.renewed_at = sent_at
        if endpoint.healthy_since is None:
            endpoint.healthy_since = sent_at
        return [
            Claim(
                bytes_to_str(owner),
                int(float(lease_end)),
                int(now),
                [bytes_to_str(tag) for tag in tags],
            )
            for owner, lease_end, now, tags in reply
        ]

    def _put_back(self, endpoint: _Endpoint, claims: list[Claim]) -> int:
        for claim in claims:
            if claim.tags:
                log.warning(
                    "%s: putting its %d unacked message(s) back at the head of their queue(s)",
                    claim.describe(),
                    len(claim.tags),
                )
            else:
                log.info("%s: it held no message", claim.describe())
            for tag in claim.tags:
                endpoint.claimed.add(tag)
        batch = endpoint.claimed.take_all()
        if not batch:
            return 0
        channel = endpoint.live_channel()
        done = 0
        try:
            if channel is None:
                raise ConnectionError("no open channel on this broker yet")
            for tag in batch:
                # kombu's restore in a WATCH transaction: pushed once even if another process
                # restores the same tag; its _remove_from_indices drops it from our owner set
                channel.qos.restore_by_tag(tag, client=endpoint.client)
                done += 1
        except Exception as exc:  # kept for the next heartbeat, whatever it was
            endpoint.claimed.put_back(batch[done:])
            log.warning("%d claimed message(s) not put back yet: %r", len(batch) - done, exc)
        return done


_ownership = Ownership()


def ownership() -> Ownership:
    """This process's :class:`Ownership` (a fresh one in a forked child)."""
    global _ownership
    if _ownership.pid != os.getpid():
        _ownership = Ownership()
    return _ownership


def enable_ownership() -> str:
    """Record takes under this process's lease from now on (the worker's heartbeat calls it
    once the worker consumes); -> the owner id."""
    return ownership().enable()


def keep_alive(*, reap: bool = True) -> int:
    """Renew this process's broker leases and put back dead owners' messages (heartbeat)."""
    return ownership().keep_alive(reap=reap)


def release_ownership() -> None:
    """Drop this process's broker leases (graceful stop)."""
    ownership().release()


# --- wiring ----------------------------------------------------------------------------------


#: How a worker retries a broker connection that went away: kombu's default schedule sleeps 2,
#: 4, 6, 8 ... s (up to 30 s) between attempts, so consuming resumed up to 12.8 s after Redis
#: came back. Here: 0.1 s, then +0.2 s per attempt, at most 1 s apart (one cheap connection
#: attempt per second per worker process while the broker is down).
RECONNECT_INTERVAL_START_S = 0.1
RECONNECT_INTERVAL_STEP_S = 0.2
RECONNECT_INTERVAL_MAX_S = 1.0


class Connection(KombuConnection):  # type: ignore[misc]
    """A kombu Connection that uses :class:`Transport` where kombu would use its Redis one,
    and reconnects on a short schedule (:data:`RECONNECT_INTERVAL_MAX_S`) unless the caller
    passes its own intervals."""

    def ensure_connection(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) <= 2:  # (errback, max_retries) as Celery's consumer passes them
            kwargs.setdefault("interval_start", RECONNECT_INTERVAL_START_S)
            kwargs.setdefault("interval_step", RECONNECT_INTERVAL_STEP_S)
            kwargs.setdefault("interval_max", RECONNECT_INTERVAL_MAX_S)
        return super().ensure_connection(*args, **kwargs)

    def get_transport_cls(self) -> Any:
        cls = super().get_transport_cls()
        if cls is kombu_redis.Transport:
            return Transport
        return cls


class TransportSelector(CeleryAMQP):  # type: ignore[misc]
    """Celery's AMQP helper with :class:`Connection` (``Celery(amqp=...)``)."""

    Connection = Connection
    BrokerConnection = Connection

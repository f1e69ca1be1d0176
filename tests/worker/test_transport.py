"""fin-relay's Redis transport (``fin_relay.worker.transport``) against a real Redis that is
stopped at the worst moments (a private AOF Redis, ``appendfsync always``, restarted in place).

* Atomic take (fix 1): a take whose reply is lost with the connection (what a Redis shutdown
  or kill does to a ``BRPOP`` reply) loses the message with stock kombu; ours puts it back at
  the next channel, exactly once. Also: empty queues are polled with a bounded rate and
  latency; a full Redis (noeviction) refuses the take instead of losing the message.
* Held messages (fix 2, kombu's ``BRPOP`` path): Redis dies after ``BRPOP`` handed a message
  over and before kombu wrote its unacked record: stock kombu drops it; ours holds it and puts
  it back once Redis answers (exactly one copy, also when the record did reach Redis).
* Detached channels (fix 3): Celery's connection-loss handling (``collect()`` then
  ``close()``) with a pending take, an unacked message and a remote-control-like channel (an
  auto-delete fanout queue): stock kombu raises ``AttributeError`` from ``_connparams``; ours
  raises only connection errors, and the late ack works once Redis is back.
* Dead consumers (fix 4): with ownership on, each take records its tag under the process's
  owner id and acks/restores remove it; a process whose lease ran out (SIGKILLed for real, in a
  subprocess) gets its unacked messages put back at the head of their queue by a live one,
  once, also when two reapers race or the reaper dies after claiming them; a live owner's and
  acked messages never; after a Redis restart longer than a lease nobody reaps before the live
  owners renewed; a graceful stop hands what is left over at once.
* The ack sent with the outcome: the outcome's transaction removes the unacked records when
  the broker is the same Redis, the ack after it writes nothing, a stop in between redelivers
  nothing; another database or kombu's BRPOP path acks as before.
* The wiring: fin-relay's Celery app uses the transport for Redis URLs only, keeping kombu's
  URL handling; a real worker consumes through it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kombu
import pytest
import redis
from kombu.common import ignore_errors
from kombu.transport import redis as kombu_redis

from fin_relay.contract import names
from fin_relay.contract.settings import WorkerSettings
from fin_relay.embedded_redis import EmbeddedRedis, free_port
from fin_relay.worker import app as app_module
from fin_relay.worker import transport
from fin_relay.worker.app import celery_config, create_app
from tests.fixtures.worker import REPO, wait_until

pytestmark = pytest.mark.integration

QUEUE = kombu.Queue("tq", kombu.Exchange("tq", type="direct"), routing_key="tq")
STOCK = "kombu.transport.redis:Transport"
#: Tests reproducing stock kombu's failures: they describe the version checked against only.
needs_verified_kombu = pytest.mark.skipif(
    not transport.kombu_verified(),
    reason=f"checked against kombu {transport.KOMBU_VERIFIED} only",
)
OURS = "fin_relay.worker.transport:Transport"


@pytest.fixture
def aof_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(port=free_port(), appendonly=True, appendfsync="always")
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no redis-server: {exc}")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_process_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    transport._held.take_all()
    transport._orphans.take_all()
    monkeypatch.setattr(transport, "_ownership", transport.Ownership())  # off, no lease
    monkeypatch.setattr(transport, "_ack_channel", None)
    transport._acked_ahead.clear()
    yield
    transport._held.take_all()
    transport._orphans.take_all()


@pytest.fixture
def brpop_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our transport on kombu's BRPOP path (fix 1 off), where fixes 2 and 3 apply alone."""
    monkeypatch.setattr(transport.Channel, "ATOMIC_TAKE", False)


def publish(conn: kombu.Connection, body: dict[str, Any]) -> None:
    with conn.Producer() as producer:
        producer.publish(body, exchange=QUEUE.exchange, routing_key="tq", declare=[QUEUE])


def use_app_on(monkeypatch: pytest.MonkeyPatch, server: EmbeddedRedis) -> None:
    """fin-relay's worker module uses a fresh app whose broker is ``server``."""
    app = create_app()
    app.conf.broker_url = server.url
    monkeypatch.setattr(app_module, "app", app)


def client(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url, decode_responses=True)


def take_one(conn: kombu.Connection, timeout_s: float = 5.0) -> tuple[list[Any], Exception | None]:
    """Consume ``tq`` until one message arrives or draining raises; -> (messages, error)."""
    got: list[Any] = []
    consumer = conn.Consumer([QUEUE], callbacks=[lambda _body, message: got.append(message)])
    consumer.consume()
    try:
        while not got:
            conn.drain_events(timeout=timeout_s)
    except conn.connection_errors as exc:
        return got, exc
    return got, None


def consume_again(server: EmbeddedRedis, transport_cls: str = OURS) -> list[Any]:
    with kombu.Connection(server.url, transport=transport_cls) as conn:
        got, error = take_one(conn)
        assert error is None
        for message in got:
            message.ack()
        return [m.payload for m in got]


def settled(server: EmbeddedRedis) -> tuple[int, int, int]:
    r = client(server)
    return r.llen("tq"), r.hlen("unacked"), r.zcard("unacked_index")


# --- fix 1: atomic take ----------------------------------------------------------------------


def lose_the_reply_carrying_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis executed the take (BRPOP or our script) but its reply never arrives: the
    connection drops with the reply unread, as at a Redis shutdown or kill."""
    original = redis.Redis.parse_response

    def parse_response(self: Any, connection: Any, command_name: Any, **options: Any) -> Any:
        reply = original(self, connection, command_name, **options)
        if command_name in ("BRPOP", "EVALSHA") and reply:
            connection.disconnect()
            raise redis.ConnectionError("connection lost before the reply was read")
        return reply

    monkeypatch.setattr(redis.Redis, "parse_response", parse_response)


@needs_verified_kombu
def test_stock_kombu_loses_a_message_whose_brpop_reply_is_lost(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window the atomic take closes, reproduced (BRPOP's pop is persisted)."""
    with kombu.Connection(aof_redis.url, transport=STOCK) as conn:
        publish(conn, {"n": 1})
        lose_the_reply_carrying_a_message(monkeypatch)
        got, error = take_one(conn)
        assert got == [] and error is not None
    monkeypatch.undo()
    assert settled(aof_redis) == (0, 0, 0)  # nowhere


@pytest.mark.parametrize("restart", [False, True], ids=["connection-lost", "redis-killed"])
def test_message_of_a_lost_take_reply_is_put_back_once(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, restart: bool
) -> None:
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 1})
        inflight_key = conn.default_channel._inflight_key
        lose_the_reply_carrying_a_message(monkeypatch)
        got, error = take_one(conn)
        assert got == [] and isinstance(error, redis.ConnectionError)
        assert conn.default_channel._inflight_key != inflight_key  # never written again
        monkeypatch.undo()
        # taken and recorded in one step: the message is in kombu's unacked hash
        assert settled(aof_redis) == (0, 1, 1)
        if restart:
            aof_redis.stop(hard=True, cleanup=False)
            aof_redis.start()  # AOF replayed: still recorded
            assert settled(aof_redis) == (0, 1, 1)
        with contextlib.suppress(Exception):
            conn.collect()
    # the next channel (Celery's reconnect creates one) puts it back at once, not after the
    # visibility timeout; consumed once, nothing left
    assert consume_again(aof_redis) == [{"n": 1}]
    assert settled(aof_redis) == (0, 0, 0)
    assert not client(aof_redis).exists(inflight_key)  # checked, then removed


def test_shutdown_checks_lost_take_replies(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stopping before any new channel was created still puts the message back."""
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 5})
        lose_the_reply_carrying_a_message(monkeypatch)
        take_one(conn)
        monkeypatch.undo()
    assert transport.lost_take_replies() == 1
    use_app_on(monkeypatch, aof_redis)
    app_module._put_back_held_messages(wait_s=5)
    assert transport.lost_take_replies() == 0
    assert settled(aof_redis) == (1, 0, 0)


def test_taken_message_is_recorded_until_acked_and_not_put_back_twice(
    aof_redis: EmbeddedRedis,
) -> None:
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 1})
        publish(conn, {"n": 2})
        got, error = take_one(conn)
        assert error is None and [m.payload for m in got] == [{"n": 1}]
        assert settled(aof_redis) == (1, 1, 1)
        raw = client(aof_redis).hget("unacked", got[0].delivery_tag)
        assert raw is not None and kombu_redis.loads(raw)[1:] == ["tq", "tq"]  # kombu's format
        assert conn.default_channel.qos._delivered  # kombu's in-memory bookkeeping as usual
        got[0].ack()
        assert settled(aof_redis) == (1, 0, 0)
        # the reply did arrive: a later channel must not put it back
        transport._orphans.add(
            transport._Orphan(conn.default_channel._inflight_key, got[0].delivery_tag)
        )
    assert consume_again(aof_redis) == [{"n": 2}]
    assert settled(aof_redis) == (0, 0, 0)


def test_a_consumer_without_acks_leaves_no_unacked_record(aof_redis: EmbeddedRedis) -> None:
    """Celery's control replies are consumed with no_ack: the take would record them as
    unacked and nobody would ack them (redelivered after the visibility timeout). A channel
    with such a consumer polls kombu's way; once it is cancelled, the take is back."""
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 1})
        got: list[Any] = []
        consumer = conn.Consumer(
            [QUEUE], callbacks=[lambda body, _message: got.append(body)], no_ack=True
        )
        consumer.consume()
        while not got:
            conn.drain_events(timeout=5)
        assert got == [{"n": 1}]
        assert settled(aof_redis) == (0, 0, 0)
        channel = conn.default_channel
        assert channel._last_received is None  # not taken by the script
        consumer.cancel()
        assert not channel._no_ack_tags
        publish(conn, {"n": 2})
        taken, error = take_one(conn)  # acks on: taken and recorded by the script again
        assert error is None and [m.payload for m in taken] == [{"n": 2}]
        assert channel._last_received == taken[0].delivery_tag  # set by the take only
        taken[0].ack()
    assert settled(aof_redis) == (0, 0, 0)


def test_acks_reuse_one_client_per_pool_and_still_settle(aof_redis: EmbeddedRedis) -> None:
    """kombu builds a redis.Redis per ack; the transport reuses one per connection pool."""
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        for n in range(3):
            publish(conn, {"n": n})
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second and first.connection_pool is channel._pool
        for _ in range(3):
            got, error = take_one(conn)
            assert error is None and len(got) == 1
            got[0].ack()
        assert settled(aof_redis) == (0, 0, 0)
        with channel.conn_or_acquire() as third:
            assert third is first  # every ack went through the one client
        channel._disconnect_pools()  # kombu drops its pools (e.g. closing): a new client
        with channel.conn_or_acquire() as fresh:
            assert fresh is not first and fresh.connection_pool is channel._pool
            assert fresh.ping()


def test_every_pool_thread_can_ack_at_the_same_moment(aof_redis: EmbeddedRedis) -> None:
    """Each ack the pool threads send (QoS.ack) needs a connection of the channel's pool for
    its round trip. kombu caps that pool at 10 connections and raises ``Too many connections``
    past it ("Couldn't ack", the message left for redelivery); with the worker's transport
    options the threads' own number bounds it instead."""
    settings = WorkerSettings(redis_url=aof_redis.url, fin_api_token="t")
    options = celery_config(settings)["broker_transport_options"]
    threads = 64
    with kombu.Connection(aof_redis.url, transport=OURS, transport_options=options) as conn:
        for n in range(threads):
            publish(conn, {"n": n})
        messages: list[Any] = []
        consumer = conn.Consumer([QUEUE], callbacks=[lambda _b, m: messages.append(m)])
        consumer.qos(prefetch_count=threads)
        consumer.consume()
        while len(messages) < threads:
            conn.drain_events(timeout=5)
        assert settled(aof_redis) == (0, threads, threads)
        pool = conn.default_channel.pool
        all_in = threading.Barrier(threads)
        errors: list[BaseException] = []

        def ack(message: Any) -> None:
            # every thread holds a connection of the pool at the same moment, as 64 acks
            # sent together do, then acks
            held = pool.get_connection()
            try:
                all_in.wait(timeout=10)
            finally:
                pool.release(held)
            message.ack()

        def run(message: Any) -> None:
            try:
                ack(message)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                all_in.abort()

        workers = [threading.Thread(target=run, args=(m,)) for m in messages]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=30)
        assert errors == []
        assert settled(aof_redis) == (0, 0, 0)


def test_empty_queues_are_polled_at_a_bounded_rate_and_latency(aof_redis: EmbeddedRedis) -> None:
    r = client(aof_redis)
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        conn.Consumer([QUEUE], callbacks=[lambda _b, m: m.ack()]).consume()
        r.config_resetstat()
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=1.0)
        calls = r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        assert 5 <= calls <= 1.0 / transport.IDLE_POLL_MAX_S + 12, calls
        assert r.info("persistence")["aof_rewrite_in_progress"] == 0
        got: list[float] = []
        conn.Consumer(
            [QUEUE], callbacks=[lambda _b, m: (got.append(time.monotonic()), m.ack())]
        ).consume()
        sent = time.monotonic()
        r.lpush("tq", kombu_message_json(conn, {"n": 1}))
        with contextlib.suppress(socket.timeout):
            conn.drain_events(timeout=2)
        assert got and got[0] - sent < transport.IDLE_POLL_MAX_S + 0.1


def kombu_message_json(conn: kombu.Connection, body: dict[str, Any]) -> str:
    channel = conn.default_channel
    message = channel.prepare_message(kombu_redis.dumps(body), content_type="application/json")
    message["properties"]["delivery_info"] = {"exchange": "tq", "routing_key": "tq"}
    message["properties"]["delivery_tag"] = "tag-latency"
    return str(kombu_redis.dumps(message))


def test_full_redis_refuses_the_take_instead_of_losing_the_message(
    aof_redis: EmbeddedRedis,
) -> None:
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 1})
        conn.Consumer([QUEUE], callbacks=[lambda _b, _m: None]).consume()
        r = client(aof_redis)
        r.config_set("maxmemory", 1)  # every write that may grow memory is refused
        try:
            with pytest.raises(redis.ResponseError, match="maxmemory"):
                for _ in range(5):
                    with contextlib.suppress(socket.timeout):
                        conn.drain_events(timeout=1)
        finally:
            r.config_set("maxmemory", 0)
        assert settled(aof_redis) == (1, 0, 0)  # still on its queue


def test_non_kombu_item_is_handed_over_as_brpop_would(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a hook (plain kombu use), garbage on a queue reaches kombu's own error handling,
    not the script's."""
    monkeypatch.setattr(transport, "on_undecodable_item", None)
    r = client(aof_redis)
    r.lpush("tq", "not json")
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        conn.Consumer([QUEUE], callbacks=[lambda _b, _m: None]).consume()
        with pytest.raises(ValueError):
            conn.drain_events(timeout=2)
    assert settled(aof_redis) == (0, 0, 0)  # popped, as kombu's BRPOP does


def test_non_kombu_item_goes_to_the_hook_and_consuming_goes_on(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the worker's hook set, garbage is handed to it (a dead letter) and the next real
    message is delivered: nothing raises."""
    seen: list[tuple[str, Any]] = []
    monkeypatch.setattr(transport, "on_undecodable_item", lambda q, item: seen.append((q, item)))
    r = client(aof_redis)
    r.lpush("tq", "not json")
    received: list[Any] = []
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        conn.Consumer(
            [QUEUE], callbacks=[lambda body, m: (received.append(body), m.ack())]
        ).consume()
        with conn.Producer() as producer:
            producer.publish({"n": 1}, routing_key="tq", serializer="json")
        for _ in range(50):
            if received:
                break
            with contextlib.suppress(socket.timeout, TimeoutError):
                conn.drain_events(timeout=0.2)
    assert [(q, bytes(item) if isinstance(item, bytes) else item) for q, item in seen] in (
        [("tq", b"not json")],
        [("tq", "not json")],
    )
    assert received == [{"n": 1}]


# --- fix 2: held messages (kombu's BRPOP path) -----------------------------------------------


def kill_before_unacked_write(
    monkeypatch: pytest.MonkeyPatch, server: EmbeddedRedis, *, write_reaches_redis: bool = False
) -> None:
    """Stop Redis (SIGKILL) just before kombu writes the unacked record of a delivered message
    (or, with ``write_reaches_redis``, just after the write, before its reply is read)."""
    original = kombu_redis.QoS.pipe_or_acquire

    @contextlib.contextmanager
    def pipe_or_acquire(self: Any, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        with original(self, pipe, client) as p:
            if not write_reaches_redis:
                server.stop(hard=True, cleanup=False)
                yield p
                return
            execute = p.execute

            def execute_then_die(*args: Any, **kwargs: Any) -> Any:
                execute(*args, **kwargs)
                server.stop(hard=True, cleanup=False)
                raise redis.ConnectionError("connection lost before the reply")

            p.execute = execute_then_die
            yield p

    monkeypatch.setattr(kombu_redis.QoS, "pipe_or_acquire", pipe_or_acquire)


@needs_verified_kombu
def test_stock_kombu_drops_a_message_when_redis_dies_before_the_unacked_write(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure fix 2 handles, reproduced (proves the next test hits the window)."""
    with kombu.Connection(aof_redis.url, transport=STOCK) as conn:
        publish(conn, {"n": 1})
        kill_before_unacked_write(monkeypatch, aof_redis)
        got, error = take_one(conn)
        assert got == [] and error is not None
        with contextlib.suppress(Exception):
            conn.collect()
    monkeypatch.undo()
    aof_redis.start()  # the AOF is replayed: BRPOP's pop was persisted
    assert settled(aof_redis) == (0, 0, 0)  # the message is gone


@pytest.mark.usefixtures("brpop_path")
@pytest.mark.parametrize("write_reaches_redis", [False, True], ids=["write-lost", "reply-lost"])
def test_message_taken_just_before_redis_died_is_put_back_once(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, write_reaches_redis: bool
) -> None:
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 1})
        kill_before_unacked_write(monkeypatch, aof_redis, write_reaches_redis=write_reaches_redis)
        got, error = take_one(conn)
        # not handed to the application; the connection error still reaches Celery
        assert got == [] and isinstance(error, redis.ConnectionError)
        held = transport.held_messages()
        assert [h.routing_key for h in held] == ["tq"]
        with contextlib.suppress(Exception):
            conn.collect()
    monkeypatch.undo()
    aof_redis.start()
    r = client(aof_redis)
    assert r.llen("tq") == 0  # the pop was persisted: only this process has the message
    assert r.hlen("unacked") == (1 if write_reaches_redis else 0)
    # the next channel (Celery's reconnect creates one) puts it back, exactly once
    assert consume_again(aof_redis) == [{"n": 1}]
    assert transport.held_messages() == []
    assert settled(aof_redis) == (0, 0, 0)


@pytest.mark.usefixtures("brpop_path")
def test_held_message_stays_held_while_redis_is_down_and_is_put_back_later(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 2})
        kill_before_unacked_write(monkeypatch, aof_redis)
        take_one(conn)
        monkeypatch.undo()
        channel = conn.default_channel
        assert channel.restore_held() == 0  # Redis still down: kept
        assert len(transport.held_messages()) == 1
        aof_redis.start()
        # kombu's periodic unacked sweep puts it back on a live channel too
        channel.qos.restore_visible(num=10, interval=1)
    assert transport.held_messages() == []
    assert client(aof_redis).llen("tq") == 1
    assert consume_again(aof_redis) == [{"n": 2}]


@pytest.mark.usefixtures("brpop_path")
def test_shutdown_puts_back_held_messages_or_names_the_lost_ones(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 3})
        kill_before_unacked_write(monkeypatch, aof_redis)
        take_one(conn)
        monkeypatch.undo()
    use_app_on(monkeypatch, aof_redis)
    app_module._put_back_held_messages(wait_s=0.5)  # Redis down: reported, still held
    assert "not put back" in caplog.text and len(transport.held_messages()) == 1
    aof_redis.start()
    app_module._put_back_held_messages(wait_s=5)
    assert transport.held_messages() == []
    assert client(aof_redis).llen("tq") == 1


# --- fix 3: AttributeError during Celery's connection-loss handling --------------------------


def lose_connection_with_a_pending_take(
    server: EmbeddedRedis, transport_cls: str
) -> Callable[[], None]:
    """Celery's state at a graceful Redis shutdown, then its handling of the connection loss
    (``Consumer.on_connection_error_after_connected``); -> ``ack`` of the unacked message."""
    conn = kombu.Connection(server.url, transport=transport_cls)
    publish(conn, {"n": 4})
    got: list[Any] = []
    conn.Consumer([QUEUE], callbacks=[lambda _b, m: got.append(m)]).consume()
    # remote control (pidbox): a second channel consuming an auto-delete fanout queue
    pidbox = conn.channel()
    fanout = kombu.Queue("pid", kombu.Exchange("pidx", type="fanout"), auto_delete=True)
    kombu.Consumer(pidbox, [fanout], callbacks=[lambda _b, _m: None]).consume()
    assert pidbox.client is not None
    while not got:
        conn.drain_events(timeout=5)
    conn.transport.cycle.on_poll_start()  # the next take is on the wire, as in the event loop
    assert conn.default_channel._in_poll
    server.stop(cleanup=False)  # graceful: SIGTERM
    with contextlib.suppress(Exception):
        conn.collect(socket_timeout=1)
    ignore_errors(conn, conn.close)  # only connection errors are ignored, as in Celery
    return got[0].ack


@needs_verified_kombu
def test_stock_kombu_raises_attribute_error_after_a_graceful_redis_shutdown(
    aof_redis: EmbeddedRedis,
) -> None:
    with pytest.raises(AttributeError, match="hostname"):
        lose_connection_with_a_pending_take(aof_redis, STOCK)


@pytest.mark.parametrize("atomic_take", [True, False], ids=["atomic-take", "brpop"])
def test_connection_loss_handling_raises_only_connection_errors_and_late_acks_work(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, atomic_take: bool
) -> None:
    monkeypatch.setattr(transport.Channel, "ATOMIC_TAKE", atomic_take)
    ack = lose_connection_with_a_pending_take(aof_redis, OURS)
    with pytest.raises(redis.ConnectionError):
        ack()  # Redis down: a connection error (Celery logs it), not AttributeError
    aof_redis.start()
    assert client(aof_redis).hlen("unacked") == 1
    ack()  # Redis back: the ack of a task that finished after the reconnect works
    assert settled(aof_redis) == (0, 0, 0)


# --- fix 4: dead consumers ------------------------------------------------------------------

#: Leases of the processes in these tests (the product's is ``transport.LEASE_MS``, 10 s).
TEST_LEASE_MS = 1000

#: A consumer process: takes ``take`` messages of ``tq`` with ownership on, acks the first
#: ``ack``, prints its owner id and tags, then renews its lease every ``renew_ms`` (never reaps)
#: until killed.
OWNER_PROCESS = """
import json, sys, time
import kombu
from fin_relay.worker import transport
url, take, ack, lease_ms, renew_ms = sys.argv[1], *map(int, sys.argv[2:6])
transport.LEASE_MS = lease_ms
transport.FRESH_RENEWAL_S = lease_ms / 2000
queue = kombu.Queue("tq", kombu.Exchange("tq", type="direct"), routing_key="tq")
with kombu.Connection(url, transport="fin_relay.worker.transport:Transport") as conn:
    got = []
    consumer = conn.Consumer([queue], callbacks=[lambda _body, message: got.append(message)])
    consumer.qos(prefetch_count=take)
    owner = transport.enable_ownership()
    consumer.consume()
    while len(got) < take:
        conn.drain_events(timeout=10)
    for message in got[:ack]:
        message.ack()
    print(json.dumps({
        "owner": owner,
        "held": {m.delivery_tag: m.payload["n"] for m in got[ack:]},
        "acked": [m.payload["n"] for m in got[:ack]],
    }), flush=True)
    while True:
        time.sleep(renew_ms / 1000)
        transport.keep_alive(reap=False)
"""


class OwnerProcess:
    """A real consumer process holding unacked messages under its lease (SIGKILL: it dies)."""

    def __init__(
        self,
        url: str,
        *,
        take: int,
        ack: int = 0,
        lease_ms: int = TEST_LEASE_MS,
        renew_ms: int = 200,
    ) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        args = [str(v) for v in (url, take, ack, lease_ms, renew_ms)]
        self.process = subprocess.Popen(
            [sys.executable, "-c", OWNER_PROCESS, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(10)
            raise AssertionError(self.process.stderr.read().decode() if self.process.stderr else "")
        info = json.loads(line)
        self.owner: str = info["owner"]
        self.held: dict[str, int] = info["held"]  # tag -> body number
        self.acked: list[int] = info["acked"]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def owner_processes() -> Iterator[Callable[..., OwnerProcess]]:
    started: list[OwnerProcess] = []

    def start(url: str, **kwargs: Any) -> OwnerProcess:
        started.append(OwnerProcess(url, **kwargs))
        return started[-1]

    yield start
    for process in started:
        process.close()


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's leases as short as the owner processes' (the setting under test)."""
    monkeypatch.setattr(transport, "LEASE_MS", TEST_LEASE_MS)
    monkeypatch.setattr(transport, "FRESH_RENEWAL_S", TEST_LEASE_MS / 2000)


def publish_numbered(server: EmbeddedRedis, count: int) -> None:
    with kombu.Connection(server.url, transport=OURS) as conn:
        for n in range(count):
            publish(conn, {"n": n})


def owned(r: redis.Redis, owner: str) -> set[str]:
    return set(r.smembers(names.broker_owner(owner)))


def lease_owners(r: redis.Redis) -> dict[str, float]:
    return dict(r.zrange(names.broker_owners(), 0, -1, withscores=True))


def queued_numbers(r: redis.Redis) -> list[int]:
    """Body numbers on ``tq``, the next to be delivered first (takes pop from the right)."""
    numbers = []
    for item in reversed(r.lrange("tq", 0, -1)):
        message = kombu_redis.loads(item)
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        numbers.append(int(kombu_redis.loads(body)["n"]))
    return numbers


class Reaper:
    """A live process's ownership in this test process: its own :class:`transport.Ownership`,
    a kombu connection registered with it (the channel its restores go through)."""

    def __init__(self, server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ownership = transport.Ownership()
        monkeypatch.setattr(transport, "_ownership", self.ownership)
        self.conn = kombu.Connection(server.url, transport=OURS)
        self.channel = self.conn.default_channel  # registers with self.ownership
        self.owner = self.ownership.enable()
        self.restored = 0

    def keep_alive(self) -> int:
        restored = self.ownership.keep_alive()
        self.restored += restored
        return restored

    def reap_until(self, predicate: Callable[[], bool], what: str, timeout_s: float = 15) -> None:
        wait_until(lambda: self.keep_alive() >= 0 and predicate(), timeout_s, what, step_s=0.1)

    def close(self) -> None:
        self.conn.release()


@pytest.fixture
def reapers(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, short_lease: None
) -> Iterator[Callable[[], Reaper]]:
    made: list[Reaper] = []

    def make() -> Reaper:
        made.append(Reaper(aof_redis, monkeypatch))
        return made[-1]

    yield make
    for reaper in made:
        reaper.close()


def test_takes_are_owned_only_with_ownership_on_and_until_acked(aof_redis: EmbeddedRedis) -> None:
    r = client(aof_redis)
    publish_numbered(aof_redis, 4)
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        got, error = take_one(conn)  # ownership off (no heartbeat): nothing recorded
        assert error is None and not r.keys("unacked_owner*")
        got[0].ack()
        owner = transport.enable_ownership()
        assert owner.split(":")[:2] == [socket.gethostname(), str(os.getpid())]
        assert owner != transport.new_owner_id()  # random part: unique per process
        lease_end = lease_owners(r)[owner]
        redis_now_ms = r.time()[0] * 1000
        assert redis_now_ms < lease_end <= redis_now_ms + transport.LEASE_MS + 1000
        first, _ = take_one(conn)
        second, _ = take_one(conn)
        tags = {first[0].delivery_tag, second[0].delivery_tag}
        assert owned(r, owner) == tags == set(r.hkeys("unacked"))
        first[0].ack()
        assert owned(r, owner) == {second[0].delivery_tag}  # the ack removed it
        second[0].reject(requeue=True)  # a restore (kombu's restore_by_tag) removes it too
        assert owned(r, owner) == set() and settled(aof_redis) == (2, 0, 0)
        third, _ = take_one(conn)
        assert owned(r, owner) == {third[0].delivery_tag}
    # a graceful close puts back what the channel held (kombu): no longer owned
    assert owned(r, owner) == set() and settled(aof_redis) == (2, 0, 0)
    transport.release_ownership()
    assert owner not in lease_owners(r)  # nothing left: no lease left behind


def test_a_consumer_without_acks_owns_nothing(aof_redis: EmbeddedRedis) -> None:
    """Celery's control replies (no_ack) are never owned: nobody would ack them."""
    r = client(aof_redis)
    publish_numbered(aof_redis, 1)
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        owner = transport.enable_ownership()
        got: list[Any] = []
        consumer = conn.Consumer([QUEUE], callbacks=[lambda b, _m: got.append(b)], no_ack=True)
        consumer.consume()
        while not got:
            conn.drain_events(timeout=5)
        assert got == [{"n": 0}] and owned(r, owner) == set() and settled(aof_redis) == (0, 0, 0)


def test_dead_owner_messages_are_put_back_once_at_the_head_and_a_live_owners_never(
    aof_redis: EmbeddedRedis,
    owner_processes: Callable[..., OwnerProcess],
    reapers: Callable[[], Reaper],
) -> None:
    r = client(aof_redis)
    publish_numbered(aof_redis, 8)
    dead = owner_processes(aof_redis.url, take=3, ack=1)  # holds 2, acked 1
    live = owner_processes(aof_redis.url, take=2)  # holds 2, renews its lease
    assert owned(r, dead.owner) == set(dead.held) and owned(r, live.owner) == set(live.held)
    assert set(lease_owners(r)) == {dead.owner, live.owner}
    assert r.llen("tq") == 3 and r.hlen("unacked") == 4
    reaper = reapers()
    dead.kill()
    killed_at = time.monotonic()
    reaper.reap_until(lambda: r.llen("tq") == 5, "the dead owner's 2 messages back")
    recovery_s = time.monotonic() - killed_at
    # at the head of the queue (delivered next), each once; the acked one is not among them
    assert sorted(queued_numbers(r)[:2]) == sorted(dead.held.values())
    assert sorted(queued_numbers(r)) == sorted([*dead.held.values(), 5, 6, 7])
    assert not set(dead.acked) & set(queued_numbers(r))
    assert reaper.restored == 2
    assert dead.owner not in lease_owners(r) and not r.exists(names.broker_owner(dead.owner))
    assert owned(r, reaper.owner) == set()  # claimed, then put back
    # lease 1 s, reaping starts after 1 s of healthy renewals: back within ~2 s of the kill
    assert recovery_s < 5, recovery_s
    # the live owner keeps its messages however long the reaper runs (several of its leases)
    deadline = time.monotonic() + 3 * TEST_LEASE_MS / 1000
    while time.monotonic() < deadline:
        assert reaper.keep_alive() == 0
        time.sleep(0.1)
    assert set(r.hkeys("unacked")) == set(live.held) == owned(r, live.owner)
    assert r.llen("tq") == 5 and reaper.restored == 2
    live.kill()  # and once it dies, its messages come back too
    reaper.reap_until(lambda: r.llen("tq") == 7, "the second owner's messages back")
    assert sorted(queued_numbers(r)) == sorted([*dead.held.values(), *live.held.values(), 5, 6, 7])
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0
    assert set(lease_owners(r)) == {reaper.owner}


def test_two_reapers_racing_put_each_message_back_once(
    aof_redis: EmbeddedRedis,
    owner_processes: Callable[..., OwnerProcess],
    reapers: Callable[[], Reaper],
) -> None:
    r = client(aof_redis)
    publish_numbered(aof_redis, 20)
    dead = owner_processes(aof_redis.url, take=20)
    first, second = reapers(), reapers()
    dead.kill()
    deadline = time.monotonic() + 15
    stop = threading.Event()
    errors: list[BaseException] = []

    def decide() -> None:  # once per round, before both reapers go
        if r.llen("tq") >= 20 or time.monotonic() > deadline:
            stop.set()

    barrier = threading.Barrier(2, action=decide)

    def race(reaper: Reaper) -> None:
        try:
            while True:
                barrier.wait(timeout=20)  # both call at the same moment, every round
                if stop.is_set():
                    return
                reaper.keep_alive()
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=race, args=(reaper,)) for reaper in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(queued_numbers(r)) == list(range(20))  # each once
    assert first.restored + second.restored == 20
    assert settled(aof_redis) == (20, 0, 0)
    assert owned(r, first.owner) == owned(r, second.owner) == set()


def test_a_reaper_that_dies_after_claiming_is_reaped_in_turn(
    aof_redis: EmbeddedRedis,
    owner_processes: Callable[..., OwnerProcess],
    reapers: Callable[[], Reaper],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r = client(aof_redis)
    publish_numbered(aof_redis, 3)
    dead = owner_processes(aof_redis.url, take=3)
    doomed = reapers()
    # the reaper dies right after its claim, before putting anything back
    monkeypatch.setattr(doomed.ownership, "_put_back", lambda _endpoint, _claims: 0)
    dead.kill()
    doomed.reap_until(lambda: not r.exists(names.broker_owner(dead.owner)), "the claim")
    assert owned(r, doomed.owner) == set(dead.held)  # now held under the reaper's lease
    assert r.llen("tq") == 0
    survivor = reapers()  # doomed renews no more: its lease runs out
    survivor.reap_until(lambda: r.llen("tq") == 3, "the claimed messages back")
    assert sorted(queued_numbers(r)) == [0, 1, 2] and survivor.restored == 3
    assert settled(aof_redis) == (3, 0, 0)
    assert set(lease_owners(r)) == {survivor.owner}


def test_nobody_reaps_live_owners_after_a_redis_outage_longer_than_a_lease(
    aof_redis: EmbeddedRedis,
    owner_processes: Callable[..., OwnerProcess],
    reapers: Callable[[], Reaper],
) -> None:
    """Redis keeps the leases (AOF) but its clock runs on while it is down: every lease has run
    out when it is back. A reaper first renews for a whole lease, by which time the live
    owners have renewed too."""
    r = client(aof_redis)
    publish_numbered(aof_redis, 2)
    live = owner_processes(aof_redis.url, take=2, renew_ms=300)
    reaper = reapers()
    endpoint = reaper.ownership.endpoints()[0]
    reaper.reap_until(
        lambda: time.monotonic() - (endpoint.healthy_since or 1e12) > 1.2, "a healthy reaper"
    )
    aof_redis.stop(cleanup=False)
    # the live owner is held still until Redis is back, so that its lease has surely run out
    # then (in production every live worker renews within 2 s of Redis answering again)
    live.process.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2 * TEST_LEASE_MS / 1000)  # the outage: longer than a lease
        assert reaper.keep_alive() == 0  # Redis down: renewal fails, nothing reaped
        aof_redis.start()
        r = client(aof_redis)
        assert r.zscore(names.broker_owners(), live.owner) < r.time()[0] * 1000  # ran out
        assert reaper.keep_alive() == 0  # renewed, but not healthy for a lease yet
        assert owned(r, live.owner) == set(live.held)
    finally:
        live.process.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 3 * TEST_LEASE_MS / 1000
    while time.monotonic() < deadline:  # reaping resumes meanwhile: the live owner renewed
        assert reaper.keep_alive() == 0
        time.sleep(0.05)
    assert set(r.hkeys("unacked")) == set(live.held) == owned(r, live.owner)
    assert r.llen("tq") == 0
    live.kill()  # a real death after the outage is still reaped
    reaper.reap_until(lambda: r.llen("tq") == 2, "the dead owner's messages back")
    assert settled(aof_redis) == (2, 0, 0)


def test_a_graceful_stop_hands_what_is_left_to_the_next_reaper_at_once(
    aof_redis: EmbeddedRedis, reapers: Callable[[], Reaper], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = client(aof_redis)
    publish_numbered(aof_redis, 1)
    reaper = reapers()
    endpoint = reaper.ownership.endpoints()[0]
    reaper.reap_until(
        lambda: time.monotonic() - (endpoint.healthy_since or 1e12) > 1.2, "a healthy reaper"
    )
    stopping = transport.Ownership()
    monkeypatch.setattr(transport, "_ownership", stopping)
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        owner = stopping.enable()
        got, _ = take_one(conn)
        assert owned(r, owner) == {got[0].delivery_tag}
        # an ack that could not be sent (Redis away at that moment): kombu forgets it
        conn.default_channel.qos._delivered.clear()
    stopping.release()
    assert lease_owners(r)[owner] == 0  # ended at once, not in a lease
    released_at = time.monotonic()
    reaper.reap_until(lambda: r.llen("tq") == 1, "the message left over put back")
    assert time.monotonic() - released_at < 1.0  # no lease to wait for
    assert settled(aof_redis) == (1, 0, 0) and owner not in lease_owners(r)


# --- wiring ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "ours"),
    [
        ("redis://127.0.0.1:1/0", True),
        ("rediss://:pw@127.0.0.1:1/3", True),
        ("amqp://guest:guest@127.0.0.1:1//", False),
        ("sentinel://127.0.0.1:1", False),
    ],
)
def test_the_app_uses_the_transport_for_redis_urls_only(url: str, ours: bool) -> None:
    app = create_app()
    for conn in (app.connection_for_read(url), app.connection_for_write(url)):
        assert isinstance(conn.transport, transport.Transport) is ours
        # the URL Celery logs keeps its scheme
        assert conn.as_uri().partition("://")[0] == url.partition("://")[0]
    conn = app.connection_for_read("rediss://:pw@127.0.0.1:1/3")
    assert conn.ssl == {"ssl_cert_reqs": ssl.CERT_NONE}  # kombu's rediss:// default is kept
    assert (conn.hostname, conn.port, conn.virtual_host) == ("127.0.0.1", 1, "3")
    assert isinstance(conn.clone().transport, transport.Transport)


def test_worker_consumes_through_the_transport(
    redis_url: str, fin_simulator: Any, celery_worker_proc: Any, test_broker_url: str | None
) -> None:
    """A real ``celery -A fin_relay.worker.app worker`` consumes through it."""
    if test_broker_url is not None:
        pytest.skip("RabbitMQ run: kombu's amqp transport is not replaced")
    worker = celery_worker_proc(base_url=fin_simulator().base_url, concurrency=1)
    wait_until(
        lambda: "broker transport fin_relay.worker.transport.Transport" in worker.logs(),
        10,
        "the worker's ready line naming its broker transport",
    )


def test_kombu_is_the_version_the_transport_was_checked_against() -> None:
    """A kombu upgrade must re-check ``fin_relay.worker.transport`` (and re-run
    ``tests/reliability/test_redis_restart.py``), then extend ``KOMBU_VERIFIED``."""
    assert transport.kombu_verified(), (kombu.VERSION, transport.KOMBU_VERIFIED)


# --- the ack sent with the job's outcome --------------------------------------------------------


def outcome_transaction(server: EmbeddedRedis, tag: str, db: int = 0) -> bool:
    """What the worker's outcome step does: its own writes and the ack commands in one
    MULTI/EXEC, then the note for the coming ack; -> whether the ack rode along."""
    r = redis.Redis.from_url(server.url.rsplit("/", 1)[0] + f"/{db}")
    acks = transport.ack_commands(tag, r)
    with r.pipeline(transaction=True) as pipe:
        pipe.hset("fin:job:j1", "outcome", "succeeded")
        for command in acks or ():
            pipe.execute_command(*command)
        pipe.execute()
    if acks:
        transport.acked_with_outcome(tag)
    return acks is not None


def test_an_ack_sent_with_the_outcome_leaves_the_ack_nothing_to_write(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 1})
        got, error = take_one(conn)
        assert error is None and settled(aof_redis) == (0, 1, 1)
        assert outcome_transaction(aof_redis, got[0].delivery_tag)
        # the records went with the outcome, in its transaction
        assert settled(aof_redis) == (0, 0, 0)
        assert client(aof_redis).hget("fin:job:j1", "outcome") == "succeeded"
        writes: list[str] = []
        original = transport.QoS._remove_from_indices

        def remove(self: Any, delivery_tag: str, pipe: Any = None) -> Any:
            writes.append(delivery_tag)
            return original(self, delivery_tag, pipe)

        monkeypatch.setattr(transport.QoS, "_remove_from_indices", remove)
        got[0].ack()
        assert writes == []  # kombu's bookkeeping only: no second round trip
        assert not conn.default_channel.qos._delivered or got[0].delivery_tag in (
            conn.default_channel.qos._dirty
        )
        # a later ack of another message writes as before
        publish(conn, {"n": 2})
        got2, _ = take_one(conn)
        got2[0].ack()
        assert writes == [got2[0].delivery_tag]
    assert settled(aof_redis) == (0, 0, 0)


def test_a_worker_gone_between_outcome_and_ack_leaves_nothing_to_redeliver(
    aof_redis: EmbeddedRedis,
) -> None:
    """The outcome committed with the ack commands, then the process stops without acking
    (the connection closes with the message delivered): kombu's restore of unacked messages
    finds no record, so the job is not delivered again; without the ack commands it is."""
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 1})
        publish(conn, {"n": 2})
        first, _ = take_one(conn)
        assert outcome_transaction(aof_redis, first[0].delivery_tag)
        second, _ = take_one(conn)  # no outcome: must come back
        assert [m.payload for m in second] == [{"n": 2}]
    assert consume_again(aof_redis) == [{"n": 2}]
    assert settled(aof_redis) == (0, 0, 0)


def test_reject_after_the_ack_went_with_the_outcome_puts_nothing_back(
    aof_redis: EmbeddedRedis,
) -> None:
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 1})
        got, _ = take_one(conn)
        assert outcome_transaction(aof_redis, got[0].delivery_tag)
        got[0].reject(requeue=True)
    assert settled(aof_redis) == (0, 0, 0)
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        assert conn.default_channel.client.llen("tq") == 0


def test_the_ack_goes_separately_on_kombus_brpop_path(
    aof_redis: EmbeddedRedis, brpop_path: None
) -> None:
    """No atomic take (a ``global_keyprefix``): no ack commands; kombu acks as usual."""
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 1})
        got, _ = take_one(conn)
        assert not outcome_transaction(aof_redis, got[0].delivery_tag)
        assert settled(aof_redis) == (0, 1, 1)
        got[0].ack()
    assert settled(aof_redis) == (0, 0, 0)


def test_the_ack_goes_separately_for_an_outcome_on_another_database(
    aof_redis: EmbeddedRedis,
) -> None:
    """The worker's Redis is not the broker's (``FIN_BROKER_URL``; here another database of
    the same server): no ack commands, the records stay until kombu's own ack."""
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        publish(conn, {"n": 1})
        got, _ = take_one(conn)
        assert not outcome_transaction(aof_redis, got[0].delivery_tag, db=1)
        assert settled(aof_redis) == (0, 1, 1)
        got[0].ack()
    assert settled(aof_redis) == (0, 0, 0)


# --- the take hands out up to the consumer's free prefetch slots -------------------------------


def drain_until(conn: kombu.Connection, done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out draining"
        with contextlib.suppress(socket.timeout):
            conn.drain_events(timeout=0.5)


def test_one_take_hands_out_up_to_the_free_prefetch_slots_in_order(
    aof_redis: EmbeddedRedis,
) -> None:
    r = client(aof_redis)
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        for n in range(5):
            publish(conn, {"n": n})
        got: list[Any] = []
        consumer = conn.Consumer([QUEUE], callbacks=[lambda _b, m: got.append(m)])
        consumer.qos(prefetch_count=3)
        consumer.consume()
        r.config_resetstat()
        conn.drain_events(timeout=2)
        # one script run took three messages: as many as the free slots, oldest first (a
        # fresh Redis answers the first EVALSHA with NOSCRIPT: not a run)
        stats = r.info("commandstats")["cmdstat_evalsha"]
        assert stats["calls"] - stats["failed_calls"] == 1, stats
        assert [m.payload["n"] for m in got] == [0, 1, 2]
        assert settled(aof_redis) == (2, 3, 3)
        got[0].ack()  # one slot free: the next take hands out one
        drain_until(conn, lambda: len(got) == 4)
        assert [m.payload["n"] for m in got] == [0, 1, 2, 3]
        assert settled(aof_redis) == (1, 3, 3)
        for m in got[1:]:
            m.ack()
        drain_until(conn, lambda: len(got) == 5)
        got[4].ack()
    assert settled(aof_redis) == (0, 0, 0)


def test_every_message_of_a_lost_multi_message_take_is_put_back_once_in_order(
    aof_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        for n in range(3):
            publish(conn, {"n": n})
        lose_the_reply_carrying_a_message(monkeypatch)
        consumer = conn.Consumer([QUEUE], callbacks=[lambda _b, _m: None])
        consumer.qos(prefetch_count=3)
        consumer.consume()
        with pytest.raises(redis.ConnectionError):
            conn.drain_events(timeout=2)
        monkeypatch.undo()
        assert settled(aof_redis) == (0, 3, 3)  # all three taken and recorded in one step
        with contextlib.suppress(Exception):
            conn.collect()
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        got: list[Any] = []
        consumer = conn.Consumer([QUEUE], callbacks=[lambda _b, m: (got.append(m), m.ack())])
        consumer.qos(prefetch_count=3)
        consumer.consume()
        drain_until(conn, lambda: len(got) == 3)
        assert [m.payload["n"] for m in got] == [0, 1, 2]  # once each, in their order
    assert settled(aof_redis) == (0, 0, 0)


def test_a_write_refused_after_the_first_message_ends_the_take_with_what_was_taken(
    aof_redis: EmbeddedRedis,
) -> None:
    """The second message's write fails inside the script (here a job key of the wrong type
    makes its numbering fail; a full Redis refuses the same way): the take hands out the
    first message, recorded, and leaves the second on its queue untouched."""
    from fin_relay.contract import redisproto
    from fin_relay.contract.celery_wire import task_message

    r = client(aof_redis)
    first_id, first = task_message("fin.start", {"conversation_id": "c-1"})
    second_id, second = task_message("fin.start", {"conversation_id": "c-2"})
    r.lpush("fin.calls", first, second)
    r.set(f"fin:job:{second_id}", "not a hash")
    keys = ["unacked_index", "unacked", "unacked_inflight:t", "unacked_owner:t", "fin.calls"]
    reply = r.evalsha(
        redisproto.BROKER_TAKE.sha
        if r.script_exists(redisproto.BROKER_TAKE.sha)[0]
        else r.script_load(redisproto.BROKER_TAKE.source),
        len(keys),
        *keys,
        time.time(),
        60_000,
        "1",
        "fin:job:",
        "fin:conv:",
        ":seq",
        60,
        "fin.start fin.reply",
        5,
    )
    assert len(reply) == 4 and reply[1] == first and reply[2:] == [1, 1]  # first, numbered 1
    assert r.lrange("fin.calls", 0, -1) == [second]
    tag = json.loads(first)["properties"]["delivery_tag"]
    assert r.hkeys("unacked") == [tag] and r.zrange("unacked_index", 0, -1) == [tag]
    assert r.get("unacked_inflight:t") == tag
    assert r.hget(f"fin:job:{first_id}", "seq") == "1" and r.get("fin:conv:c-2:seq") is None


def test_a_delivery_error_puts_the_rest_of_the_take_back_in_order(
    aof_redis: EmbeddedRedis,
) -> None:
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        for n in range(3):
            publish(conn, {"n": n})

        def explode(_body: Any, _message: Any) -> None:
            raise RuntimeError("consumer callback failed")

        consumer = conn.Consumer([QUEUE], callbacks=[explode])
        consumer.qos(prefetch_count=3)
        consumer.consume()
        with pytest.raises(RuntimeError):
            conn.drain_events(timeout=2)
        # the first message reached the callback (kombu's to settle); the other two are back
        # at the head of the queue, in order, and no longer recorded as unacked
        r = client(aof_redis)
        queued = [
            json.loads(
                kombu_redis.loads(m)["body"] and base64.b64decode(kombu_redis.loads(m)["body"])
            )["n"]
            for m in reversed(r.lrange("tq", 0, -1))
        ]
        assert queued == [1, 2]
        assert r.hlen("unacked") == 1 and r.zcard("unacked_index") == 1

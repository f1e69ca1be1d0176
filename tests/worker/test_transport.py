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
* The wiring: fin-relay's Celery app uses the transport for Redis URLs only, keeping kombu's
  URL handling; a real worker consumes through it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import kombu
import pytest
import redis
from kombu.common import ignore_errors
from kombu.transport import redis as kombu_redis

from fin_relay.embedded_redis import EmbeddedRedis, free_port
from fin_relay.worker import app as app_module
from fin_relay.worker import transport
from fin_relay.worker.app import create_app
from tests.fixtures.worker import wait_until

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
def clean_process_state() -> Iterator[None]:
    transport._held.take_all()
    transport._orphans.take_all()
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


def test_non_kombu_item_is_handed_over_as_brpop_would(aof_redis: EmbeddedRedis) -> None:
    """Garbage on a queue reaches kombu's own error handling, not the script's."""
    r = client(aof_redis)
    r.lpush("tq", "not json")
    with kombu.Connection(aof_redis.url, transport=OURS) as conn:
        conn.Consumer([QUEUE], callbacks=[lambda _b, _m: None]).consume()
        with pytest.raises(ValueError):
            conn.drain_events(timeout=2)
    assert settled(aof_redis) == (0, 0, 0)  # popped, as kombu's BRPOP does


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

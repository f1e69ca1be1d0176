"""A broker or Redis that is down (or hung) fails the enqueue within the configured bound."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from fin_relay.contract.errors import BrokerUnavailableError
from fin_relay.embedded_redis import EmbeddedRedis, free_port
from fin_relay.producer import Producer
from tests.producer.helpers import USER, settings_for

BOUND_S = 0.5
# Generous slack: the assertion is "bounded", not a latency figure (that is bench/'s job).
SLACK_S = 3.0


@pytest.fixture
def hung_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a hung Redis/broker)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    sock.close()


def _timed_enqueue(producer: Producer) -> float:
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailableError):
        producer.start(conversation_id="c", user=USER, message="hi")
    return time.monotonic() - t0


def test_nothing_listening() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with Producer(settings_for(url, fin_relay_enqueue_timeout_s=BOUND_S)) as p:
        assert _timed_enqueue(p) < BOUND_S + SLACK_S


def test_hung_server_hits_the_read_timeout(hung_server: str) -> None:
    with Producer(settings_for(hung_server, fin_relay_enqueue_timeout_s=BOUND_S)) as p:
        assert _timed_enqueue(p) < BOUND_S + SLACK_S


def test_started_then_stopped_redis() -> None:
    server = EmbeddedRedis().start()
    try:
        with Producer(settings_for(server.url, fin_relay_enqueue_timeout_s=BOUND_S)) as p:
            assert p.csat(conversation_id="c", rating="ok").created
            server.stop()
            assert _timed_enqueue(p) < BOUND_S + SLACK_S
            with pytest.raises(BrokerUnavailableError):
                p.get_conversation("c")
    finally:
        server.stop()


def test_error_message_has_no_password() -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    with Producer(settings_for(url, fin_relay_enqueue_timeout_s=BOUND_S)) as p:
        with pytest.raises(BrokerUnavailableError) as info:
            p.csat(conversation_id="c", rating="ok")
    assert "s3cret-pw" not in str(info.value)


def test_amqp_broker_down_fails_within_bound_and_forgets_the_marker(
    redis_url: str, redis_client: redis.Redis
) -> None:
    broker = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    settings = settings_for(redis_url, fin_broker_url=broker, fin_relay_enqueue_timeout_s=BOUND_S)
    with Producer(settings) as p:
        t0 = time.monotonic()
        with pytest.raises(BrokerUnavailableError):
            p.csat(conversation_id="c", rating="ok", job_id="amqp-1")
        assert time.monotonic() - t0 < BOUND_S + SLACK_S
    # the publish failed, so the same id can be retried later
    assert not redis_client.exists("fin:jobid:amqp-1")


def test_async_enqueue_against_a_hung_server_does_not_block_the_loop(hung_server: str) -> None:
    async def scenario() -> tuple[int, float]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        async with Producer(settings_for(hung_server, fin_relay_enqueue_timeout_s=BOUND_S)) as p:
            t0 = time.monotonic()
            with pytest.raises(BrokerUnavailableError):
                await p.start_async(conversation_id="c", user=USER, message="hi")
            elapsed = time.monotonic() - t0
        stop.set()
        await task
        return ticks, elapsed

    ticks, elapsed = asyncio.run(scenario())
    assert ticks > 1  # the loop kept running while the enqueue waited on the socket
    assert elapsed < BOUND_S + SLACK_S


def test_async_amqp_down(redis_url: str) -> None:
    broker = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    settings = settings_for(redis_url, fin_broker_url=broker, fin_relay_enqueue_timeout_s=BOUND_S)

    async def scenario() -> None:
        async with Producer(settings) as p:
            with pytest.raises(BrokerUnavailableError):
                await p.csat_async(conversation_id="c", rating="ok")

    asyncio.run(scenario())


def test_failed_publish_releases_the_sequence_number(
    redis_url: str, redis_client: redis.Redis
) -> None:
    from fin_relay.contract.names import Names

    names = Names("fin")
    broker = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    settings = settings_for(redis_url, fin_broker_url=broker, fin_relay_enqueue_timeout_s=BOUND_S)
    with Producer(settings) as p:
        with pytest.raises(BrokerUnavailableError):
            p.reply(conversation_id="c-seq", user=USER, message="x", job_id="lost")
    # seq 1 was handed out, then released: the conversation's next call is not held behind it
    assert redis_client.get(names.conversation_seq("c-seq")) == "1"
    assert redis_client.get(names.conversation_next("c-seq")) == "2"
    assert redis_client.hget(names.job("lost"), "seq") is None

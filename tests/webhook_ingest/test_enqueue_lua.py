"""ingest_enqueue.lua against real Redis: atomic mark + push, duplicates, malformed batches refused."""

from __future__ import annotations

import pytest
import redis

from fin_relay.contract.redisproto import INGEST_ENQUEUE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def run(client: redis.Redis, keys: list[str], payloads: list[bytes], ttl_s: int = 100) -> list[int]:
    lengths = ",".join(str(len(p)) for p in payloads)
    return list(INGEST_ENQUEUE(client, ["fin.events", *keys], [ttl_s, b"".join(payloads), lengths]))


def test_lua_file_documents_keys_and_argv() -> None:
    head = INGEST_ENQUEUE.source.splitlines()[:8]
    assert head[0].startswith("--")
    assert any("KEYS[1]" in line for line in head) and any("ARGV[1]" in line for line in head)


def test_new_duplicate_and_repeated_in_batch(redis_client: redis.Redis) -> None:
    flags = run(redis_client, ["m:a", "m:b", "m:a"], [b"A", "bé".encode(), b"A2"])
    assert flags == [1, 1, 0]
    assert redis_client.lrange("fin.events", 0, -1) == ["bé", "A"]
    assert 90 <= redis_client.ttl("m:a") <= 100
    assert run(redis_client, ["m:b", "m:c"], [b"B", b""]) == [0, 1]
    assert redis_client.lrange("fin.events", 0, -1) == ["", "bé", "A"]


@pytest.mark.parametrize(
    ("keys", "payloads", "lengths"),
    [
        (["m:x", "m:y"], [b"X"], "1"),  # fewer payloads than keys
        (["m:x"], [b"XY"], "1"),  # lengths do not cover the blob
        (["m:x"], [b"X"], "1,1"),  # more lengths than keys
    ],
)
def test_malformed_batch_writes_nothing(
    redis_client: redis.Redis, keys: list[str], payloads: list[bytes], lengths: str
) -> None:
    with pytest.raises(redis.ResponseError, match="fin-relay enqueue"):
        INGEST_ENQUEUE(redis_client, ["fin.events", *keys], [100, b"".join(payloads), lengths])
    assert redis_client.llen("fin.events") == 0 and not redis_client.keys("m:*")


def test_enqueuer_survives_a_flushed_script_cache_and_a_timed_out_call(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """The enqueuer's script call: after SCRIPT FLUSH it loads the script again, and a call cut
    short by its timeout leaves no late reply to be read as the next batch's."""
    import asyncio

    from fin_relay.contract.errors import BrokerUnavailableError
    from fin_relay.contract.names import Names
    from fin_relay.webhook_ingest.enqueue import RedisEnqueuer
    from fin_relay.webhook_ingest.enqueue import redis_client as make_client

    async def scenario() -> tuple[list[bool], bool]:
        enqueuer = RedisEnqueuer(
            make_client(redis_url, 2.0), Names("fin"), ttl_s=100, timeout_s=0.5
        )
        flags = [await enqueuer.enqueue("e1", b'{"n":1}', 1)]
        redis_client.script_flush()
        flags.append(await enqueuer.enqueue("e2", b'{"n":2}', 2))  # NOSCRIPT -> EVAL
        flags.append(await enqueuer.enqueue("e1", b'{"n":1}', 3))  # duplicate
        redis_client.client_pause(10_000, all=False)  # Redis stalls: the next call times out
        timed_out = False
        try:
            await enqueuer.enqueue("e3", b'{"n":3}', 4)
        except BrokerUnavailableError:
            timed_out = True
        finally:
            redis_client.client_unpause()
        # a duplicate then a new event: a desynchronised connection would answer each with
        # the reply of the call before it
        flags.append(await enqueuer.enqueue("e1", b'{"n":1}', 5))
        flags.append(await enqueuer.enqueue("e4", b'{"n":4}', 6))
        await enqueuer.aclose()
        return flags, timed_out

    flags, timed_out = asyncio.run(scenario())
    assert flags == [True, True, False, False, True]
    assert timed_out
    assert redis_client.exists("fin:dedup:e4") == 1


def test_enqueuer_replaces_a_held_connection_redis_closed(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """The enqueuer keeps its connection between script calls; one Redis closed in between
    (restart, idle timeout, CLIENT KILL) is replaced before sending, not failed with a 503."""
    import asyncio

    from fin_relay.contract.names import Names
    from fin_relay.webhook_ingest.enqueue import RedisEnqueuer
    from fin_relay.webhook_ingest.enqueue import redis_client as make_client

    async def scenario() -> tuple[list[bool], int]:
        enqueuer = RedisEnqueuer(
            make_client(redis_url, 2.0), Names("fin"), ttl_s=100, timeout_s=1.0
        )
        flags = [await enqueuer.enqueue("k1", b'{"n":1}', 1)]
        killed = redis_client.client_kill_filter(_type="normal", skipme=True)
        # Redis closed the socket before answering the kill; give the loop the turns in which
        # it reads that EOF (a connection closed for real has long been idle by then).
        for _ in range(10):
            await asyncio.sleep(0)
        flags.append(await enqueuer.enqueue("k2", b'{"n":2}', 2))
        flags.append(await enqueuer.enqueue("k1", b'{"n":1}', 3))  # still a duplicate
        await enqueuer.aclose()
        return flags, killed

    flags, killed = asyncio.run(scenario())
    assert killed >= 1  # the enqueuer's held connection was among those closed
    assert flags == [True, True, False]
    assert redis_client.llen("fin.events") == 2


def test_enqueuer_aclose_closes_its_connections(redis_client: redis.Redis, redis_url: str) -> None:
    """aclose() returns and closes the held connection and the pool's sockets (a pool given to
    redis.asyncio.Redis is not closed by the client's own aclose)."""
    import asyncio
    import time

    from fin_relay.contract.names import Names
    from fin_relay.webhook_ingest.enqueue import RedisEnqueuer
    from fin_relay.webhook_ingest.enqueue import redis_client as make_client

    def clients() -> int:
        return len(redis_client.client_list(_type="normal"))

    before = clients()

    async def scenario() -> tuple[int, int]:
        enqueuer = RedisEnqueuer(
            make_client(redis_url, 2.0), Names("fin"), ttl_s=100, timeout_s=1.0
        )
        await enqueuer.enqueue("c1", b'{"n":1}', 1)
        assert await enqueuer.ping(1.0)
        during = clients()
        await enqueuer.aclose()
        # still inside the loop (its end would close any socket anyway): until Redis has
        # processed the closed sockets, or the deadline
        deadline = time.monotonic() + 5
        while clients() != before and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return during, clients()

    during, after = asyncio.run(scenario())
    assert during >= before + 1
    assert after == before

"""The Redis protocol layer (``fin_relay.contract.redisproto``): every script in one folder, run
one way (sync, asyncio, held connection, pipeline), each recovering from a lost script cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
import redis.asyncio

from fin_relay.contract import redisproto

REPO = Path(__file__).resolve().parents[2]
FOLDER = Path(redisproto.__file__).parent
SKIP = {".git", ".venv", "node_modules", "build", "dist"}

INCR = redisproto.Script("return redis.call('INCR', KEYS[1]) + tonumber(ARGV[1])", "incr")


def _catalogue() -> list[redisproto.Script]:
    return [v for v in vars(redisproto).values() if isinstance(v, redisproto.Script)]


def test_every_lua_file_of_the_repository_is_in_the_folder() -> None:
    found = [
        p.relative_to(REPO)
        for p in REPO.rglob("*.lua")
        if not SKIP & set(p.relative_to(REPO).parts) and not p.is_symlink()
    ]
    outside = [p for p in found if p.parent != FOLDER.relative_to(REPO)]
    assert found and outside == [], outside


def test_every_file_of_the_folder_is_a_script_or_a_library_in_use() -> None:
    names = {p.name for p in FOLDER.glob("*.lua")}
    libraries = {"celery_wire.lua", "sequence_advance.lua"}
    assert names == {s.name for s in _catalogue()} | libraries | {"gate.lua"}
    assert "local function sequence_advance(" in redisproto.SEQUENCING.source
    assert "local function sequence_advance(" in redisproto.PRODUCER_ABANDON.source
    assert "local function celery_wire_read(" in redisproto.BROKER_TAKE.source


def test_each_script_file_documents_its_keys() -> None:
    for script in _catalogue():
        lines = redisproto.source(script.name).splitlines()
        header = lines[: next(i for i, line in enumerate(lines) if line and line[:2] != "--")]
        assert header and any("KEYS[1]" in line for line in header), script.name


def test_sync_call_and_pipeline_recover_from_a_flushed_cache(redis_client: redis.Redis) -> None:
    redis_client.script_flush()
    assert INCR(redis_client, ["n"], [10]) == 11  # NOSCRIPT -> EVAL
    assert INCR(redis_client, ["n"], [0]) == 2  # cached again: EVALSHA
    redis_client.script_flush()
    pipe = redis_client.pipeline(transaction=True)
    pipe.set("before", "1")
    INCR.queue(pipe, ["n"], [0])
    INCR.queue_source(pipe, ["n"], [100])
    # the EVAL ran inside the transaction; the EVALSHA that met NOSCRIPT runs again after it
    assert redisproto.execute(redis_client, pipe) == [True, 4, 103]
    assert redis_client.get("n") == "4"


def test_asyncio_call_and_held_connection_recover_from_a_flushed_cache(
    redis_client: redis.Redis, redis_url: str
) -> None:
    async def scenario() -> list[int]:
        client = redis.asyncio.Redis.from_url(redis_url)
        redis_client.script_flush()
        replies = [await INCR.acall(client, ["a"], [0])]
        conn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            redis_client.script_flush()
            await redisproto.aensure_ready(conn)
            replies.append(await INCR.acall_held(conn, ["a"], [0]))
            redis_client.client_kill_filter(_type="normal", skipme=True)
            for _ in range(10):
                await asyncio.sleep(0)
            await redisproto.aensure_ready(conn)  # Redis closed it: replaced, not failed
            replies.append(await INCR.acall_held(conn, ["a"], [0]))
        finally:
            await client.connection_pool.release(conn)
            await client.aclose()
        return replies

    assert asyncio.run(scenario()) == [1, 2, 3]


def test_a_held_sync_connection_redis_closed_is_replaced(redis_client: redis.Redis) -> None:
    client = redis.Redis(connection_pool=redis_client.connection_pool)
    conn = client.connection_pool.get_connection()
    try:
        redisproto.ensure_ready(conn)
        conn.send_command("PING")
        assert conn.read_response() in ("PONG", b"PONG")
        redis_client.client_kill_filter(_type="normal", skipme=True)
        redisproto.ensure_ready(conn)
        conn.send_command("PING")
        assert conn.read_response() in ("PONG", b"PONG")
    finally:
        client.connection_pool.release(conn)


@pytest.mark.parametrize(("value", "expected"), [(b"caf\xc3\xa9", "café"), ("x", "x"), (7, "7")])
def test_text_decodes_whatever_the_client(value: object, expected: str) -> None:
    assert redisproto.text(value) == expected


def test_done_and_abandon_advance_next_alike(redis_client: redis.Redis) -> None:
    """``sequence_advance.lua`` is the one rule: the worker's "done" and the producer's abandon
    leave the same ``next`` and done set for the same history."""
    ttl = 100

    def run(prefix: str, finish: str) -> tuple[str | None, list[str]]:
        nxt, done = f"{prefix}:next", f"{prefix}:done"
        for seq in (3, 2, 1, 5):
            if finish == "done":
                keys = [f"{prefix}:job", f"{prefix}:seq", nxt, f"{prefix}:state", done]
                redisproto.SEQUENCING(redis_client, keys, ["done", ttl, seq])
            else:
                keys = ["", f"{prefix}:job", nxt, done]
                redisproto.PRODUCER_ABANDON(redis_client, keys, [seq, ttl])
        return redis_client.get(nxt), redis_client.zrange(done, 0, -1)

    assert run("w", "done") == run("p", "abandon") == ("4", ["5"])

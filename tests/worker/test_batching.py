"""Coalesced Redis round trips of concurrent threads (``worker/batching.py``), real Redis."""

from __future__ import annotations

import threading

import pytest
import redis

from fin_relay.contract import redisproto
from fin_relay.worker.batching import Coalescer


def test_concurrent_stacks_each_get_their_own_replies_in_order(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    batch = Coalescer(client, max_rounds=2)
    results: dict[int, list[object]] = {}
    errors: list[BaseException] = []
    calls_before = int(client.info("stats")["total_commands_processed"])

    def job(i: int) -> None:
        try:
            for round_ in range(20):
                pipe = client.pipeline(transaction=False)
                pipe.rpush(f"l{i}", round_)
                pipe.lrange(f"l{i}", 0, -1)
                pipe.hset(f"h{i}", "last", round_)
                results[i] = batch.execute_pipeline(pipe)
                assert results[i][0] == round_ + 1  # this thread's own RPUSH reply
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    for i in range(16):
        assert results[i][1] == [str(n) for n in range(20)]
        assert client.hget(f"h{i}", "last") == "19"
    assert int(client.info("stats")["total_commands_processed"]) - calls_before >= 16 * 20 * 3


def test_an_error_fails_only_its_own_stack(redis_client: redis.Redis) -> None:
    batch = Coalescer(redis_client)
    redis_client.set("s", "text")
    with pytest.raises(redis.ResponseError):
        batch.execute([(("INCR", "s"), {}), (("SET", "after", "1"), {})])
    assert redis_client.get("after") == "1"  # like a pipeline: the rest of the stack ran
    assert batch.execute([(("INCR", "n"), {})]) == [1]


def test_lost_scripts_are_reloaded_and_the_stack_rerun(redis_client: redis.Redis) -> None:
    script = redisproto.Script("return redis.call('INCR', KEYS[1])")
    batch = Coalescer(redis_client)
    redis_client.script_flush()
    assert batch.execute([(("EVALSHA", script.sha, 1, "k"), {})]) == [1]
    assert redis_client.get("k") == "1"


def test_lost_scripts_rerun_only_the_script_not_the_rest_of_the_stack(
    redis_client: redis.Redis,
) -> None:
    """After SCRIPT FLUSH the other commands of the stack already ran: a whole re-run would
    XADD (publish) a second time."""
    script = redisproto.Script("return redis.call('INCR', KEYS[1])")
    batch = Coalescer(redis_client)
    redis_client.script_flush()
    stack = [
        (("XADD", "results", "*", "id", "e1"), {}),
        (("EVALSHA", script.sha, 1, "k"), {}),
        (("INCR", "after"), {}),
    ]
    replies = batch.execute(stack)
    assert replies[1:] == [1, 1]
    assert redis_client.xlen("results") == 1
    assert redis_client.get("k") == "1" and redis_client.get("after") == "1"


def test_lua_execute_reruns_only_failed_scripts_inside_multi(redis_client: redis.Redis) -> None:
    """``MULTI``/``EXEC`` with a lost script: Redis runs every other command (NOSCRIPT is that
    command's error at EXEC), so only the script runs again: one XADD, one marker."""
    script = redisproto.Script("return redis.call('INCR', KEYS[1])")
    redis_client.script_flush()
    pipe = redis_client.pipeline(transaction=True)
    pipe.xadd("events", {"id": "e1"})
    script.queue(pipe, ["state"], [])
    pipe.set("marker", "1")
    results = redisproto.execute(redis_client, pipe)
    assert results[1:] == [1, True]
    assert redis_client.xlen("events") == 1
    assert redis_client.get("state") == "1" and redis_client.get("marker") == "1"


def test_lua_execute_raises_other_errors(redis_client: redis.Redis) -> None:
    redis_client.set("s", "text")
    pipe = redis_client.pipeline(transaction=False)
    pipe.incr("s")
    pipe.set("after", "1")
    with pytest.raises(redis.ResponseError):
        redisproto.execute(redis_client, pipe)
    assert redis_client.get("after") == "1"


def test_a_connection_error_reaches_the_caller() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        Coalescer(client).execute([(("PING",), {})])


def test_a_connection_closed_by_redis_is_retried_on_a_fresh_socket(redis_url: str) -> None:
    """A held socket Redis closed (restart, idle timeout, CLIENT KILL) costs a reconnect, not
    a failed round trip for every job in it (as ``Pipeline.execute`` behaves)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    batch = Coalescer(client)
    assert batch.execute([(("SET", "k", "1"), {})]) == [True]
    held_id = batch._conn.send_command("CLIENT", "ID") or batch._conn.read_response()
    assert admin.client_kill_filter(_id=held_id) == 1
    assert batch.execute([(("INCR", "k"), {}), (("GET", "k"), {})]) == [2, "2"]
    client.close()
    admin.close()


def test_a_transaction_stack_is_applied_whole_with_replies_like_a_pipeline(
    redis_client: redis.Redis,
) -> None:
    """A transaction stack is sent as MULTI/EXEC: its replies are what a transaction pipeline
    returns, and it shares the round trip with plain stacks."""
    batch = Coalescer(redis_client)
    pipe = redis_client.pipeline(transaction=True)
    pipe.xadd("results", {"id": "e1"})
    pipe.hset("job", mapping={"outcome": "succeeded"})
    pipe.publish("chan", "x")
    replies = batch.execute_pipeline(pipe)
    expected = redis_client.pipeline(transaction=True)
    expected.xadd("results", {"id": "e2"})
    expected.hset("job2", mapping={"outcome": "succeeded"})
    expected.publish("chan", "x")
    reference = expected.execute()
    assert [type(r) for r in replies] == [type(r) for r in reference]
    assert replies[1:] == reference[1:] == [1, 0]
    assert redis_client.xlen("results") == 2


def test_a_transaction_stack_is_all_or_nothing(redis_client: redis.Redis) -> None:
    """A command refused when queued (wrong arity) aborts the whole transaction: nothing of it
    is applied, unlike a plain stack, where the commands before it ran."""
    batch = Coalescer(redis_client)
    stack = [
        (("XADD", "results", "*", "id", "e1"), {}),
        (("HSET", "job"), {}),  # wrong number of arguments: refused at queue time
        (("HSET", "job", "outcome", "succeeded"), {}),
    ]
    with pytest.raises(redis.ResponseError):
        batch.execute(stack, transaction=True)
    assert redis_client.xlen("results") == 0 and not redis_client.exists("job")
    # the held connection is still usable for the next stacks
    assert batch.execute([(("INCR", "n"), {})], transaction=True) == [1]


def test_lost_scripts_in_a_transaction_rerun_only_the_script(redis_client: redis.Redis) -> None:
    script = redisproto.Script("return redis.call('INCR', KEYS[1])")
    batch = Coalescer(redis_client)
    redis_client.script_flush()
    stack = [
        (("XADD", "results", "*", "id", "e1"), {}),
        (("EVALSHA", script.sha, 1, "k"), {}),
        (("HSET", "job", "outcome", "succeeded"), {}),
    ]
    assert batch.execute(stack, transaction=True)[1:] == [1, 1]
    assert redis_client.xlen("results") == 1 and redis_client.get("k") == "1"

"""enqueue.lua against real Redis: atomic mark + push, duplicates, malformed batches refused."""

from __future__ import annotations

import pytest
import redis

from fin_relay.webhook_ingest.enqueue import load_lua

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def run(client: redis.Redis, keys: list[str], payloads: list[bytes], ttl_s: int = 100) -> list[int]:
    script = client.register_script(load_lua())
    lengths = ",".join(str(len(p)) for p in payloads)
    return list(script(keys=["fin.events", *keys], args=[ttl_s, b"".join(payloads), lengths]))


def test_lua_file_documents_keys_and_argv() -> None:
    head = load_lua().splitlines()[:8]
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
    script = redis_client.register_script(load_lua())
    with pytest.raises(redis.ResponseError, match="fin-relay enqueue"):
        script(keys=["fin.events", *keys], args=[100, b"".join(payloads), lengths])
    assert redis_client.llen("fin.events") == 0 and not redis_client.keys("m:*")

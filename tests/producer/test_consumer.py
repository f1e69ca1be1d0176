"""Durable consumers (consumer groups, reclaim, duplicate suppression) and the live tail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.names import Names
from fin_relay.contract.publish import publish
from fin_relay.producer.consumer import StreamConsumer
from fin_relay.producer.subscribe import Subscription, subscribe

NAMES = Names("fin")
REPO = Path(__file__).resolve().parents[2]


def _envelope(i: int, conversation_id: str = "c1", kind: str = "call.succeeded") -> Envelope:
    return Envelope.now(
        id=f"env-{i}", type=kind, conversation_id=conversation_id, data={"job_id": f"j{i}"}
    )


def _fill(client: redis.Redis, ids: list[int], stream: str | None = None) -> None:
    target = stream or NAMES.results
    publish(client, NAMES, [(target, _envelope(i)) for i in ids], maxlen=10_000)


def test_group_created_read_acked_and_duplicates_skipped(redis_client: redis.Redis) -> None:
    consumer = StreamConsumer(redis_client, NAMES, group="g", consumer="a")
    consumer.ensure_group()
    consumer.ensure_group()  # idempotent (BUSYGROUP ignored)
    _fill(redis_client, [1, 2, 2, 3])  # env-2 published twice
    batch = consumer.read(count=10, block_ms=100)
    assert [d.envelope.id for d in batch if d.envelope] == ["env-1", "env-2", "env-3"]
    consumer.ack(*batch)
    assert all(consumer.seen(f"env-{i}") for i in (1, 2, 3))
    assert redis_client.xpending(NAMES.results, "g")["pending"] == 0
    _fill(redis_client, [3, 4])  # a republished env-3: acknowledged without handling
    assert [d.envelope.id for d in consumer.read(block_ms=100) if d.envelope] == ["env-4"]
    assert redis_client.ttl(NAMES.consumed("g")) > 0


def test_unreadable_entry_is_acknowledged_and_skipped(redis_client: redis.Redis) -> None:
    redis_client.xadd(NAMES.events, {"type": "x", "envelope": "{not json"})
    _fill(redis_client, [5], NAMES.events)
    consumer = StreamConsumer(redis_client, NAMES, group="g", consumer="a", streams=("events",))
    batch = consumer.read(block_ms=100)
    assert [d.envelope.id for d in batch if d.envelope] == ["env-5"]
    consumer.ack(*batch)
    assert redis_client.xpending(NAMES.events, "g")["pending"] == 0


def test_several_streams_and_handler_failure_leaves_entry_pending(
    redis_client: redis.Redis,
) -> None:
    _fill(redis_client, [1], NAMES.results)
    _fill(redis_client, [2], NAMES.dead)
    consumer = StreamConsumer(
        redis_client, NAMES, group="g", consumer="a", streams=("results", "dead")
    )
    seen: list[str] = []

    def handler(envelope: Envelope) -> None:
        if envelope.id == "env-2":
            raise RuntimeError("boom")
        seen.append(envelope.id)

    assert consumer.handle(consumer.read(block_ms=100), handler) == 1
    assert seen == ["env-1"]
    assert redis_client.xpending(NAMES.dead, "g")["pending"] == 1
    # the same consumer picks its own pending entry up again (e.g. after a restart)
    assert [d.envelope.id for d in consumer.pending() if d.envelope] == ["env-2"]


VICTIM = """
import sys, time, redis
from fin_relay.contract.names import Names
from fin_relay.producer.consumer import StreamConsumer

client = redis.Redis.from_url(sys.argv[1], decode_responses=True)
consumer = StreamConsumer(client, Names("fin"), group="g", consumer="victim")
batch = consumer.read(count=6, block_ms=2000)
print("READ", len(batch), flush=True)
for i, d in enumerate(batch):
    if i == 3:
        print("STUCK", d.envelope.id, flush=True)
        time.sleep(600)  # killed here, mid-batch: this entry and the rest are unacknowledged
    consumer.ack(d)  # "processed"
    print("DONE", d.envelope.id, flush=True)
"""


def test_consumer_killed_mid_batch_is_reclaimed_and_processed_once(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    _fill(redis_client, [1, 2, 3, 4, 5, 6, 6, 7, 8])  # env-6 appears twice
    script = tmp_path / "victim.py"
    script.write_text(VICTIM)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    victim = subprocess.Popen(
        [sys.executable, str(script), redis_url], stdout=subprocess.PIPE, text=True, env=env
    )
    done_by_victim: list[str] = []
    try:
        assert victim.stdout is not None
        while True:
            line = victim.stdout.readline()
            assert line, "victim exited early"
            if line.startswith("STUCK"):
                break
            if line.startswith("DONE"):
                done_by_victim.append(line.split()[1])
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    assert done_by_victim == ["env-1", "env-2", "env-3"]
    assert redis_client.xpending(NAMES.results, "g")["pending"] == 3

    rescuer = StreamConsumer(redis_client, NAMES, group="g", consumer="rescuer")
    processed: list[str] = []
    deadline = time.monotonic() + 10
    reclaimed = []
    while not reclaimed and time.monotonic() < deadline:
        reclaimed = rescuer.reclaim(min_idle_ms=200)
        if not reclaimed:
            time.sleep(0.05)
    assert [d.envelope.id for d in reclaimed if d.envelope] == ["env-4", "env-5", "env-6"]
    rescuer.handle(reclaimed, lambda e: processed.append(e.id))
    rescuer.handle(rescuer.read(count=100, block_ms=200), lambda e: processed.append(e.id))
    assert processed == ["env-4", "env-5", "env-6", "env-7", "env-8"]
    combined = done_by_victim + processed
    assert sorted(combined) == sorted(set(combined)) == [f"env-{i}" for i in range(1, 9)]
    assert rescuer.reclaim(min_idle_ms=0) == [] and rescuer.read(block_ms=50) == []
    assert redis_client.xpending(NAMES.results, "g")["pending"] == 0


def test_run_loop_stops_on_event(redis_client: redis.Redis) -> None:
    _fill(redis_client, [1, 2])
    consumer = StreamConsumer(redis_client, NAMES, group="g", consumer="a")
    stop = threading.Event()
    seen: list[str] = []

    def handler(envelope: Envelope) -> None:
        seen.append(envelope.id)
        if len(seen) == 2:
            stop.set()

    assert consumer.run(handler, stop=stop, block_ms=100) == 2
    assert seen == ["env-1", "env-2"]


def test_subscription_to_streams_and_one_conversation(redis_client: redis.Redis) -> None:
    with (
        Subscription(redis_client, NAMES, conversation_id="c-9") as conv,
        Subscription(redis_client, NAMES, streams=("results",)) as results,
    ):
        publish(
            redis_client,
            NAMES,
            [(NAMES.results, _envelope(1, "c-8")), (NAMES.results, _envelope(2, "c-9"))],
            maxlen=100,
        )
        got_conv = conv.get(timeout_s=5)
        assert got_conv is not None and got_conv.id == "env-2"
        assert conv.get(timeout_s=0.1) is None
        ids = [e.id for e in results.envelopes(timeout_s=0.5)]
        assert ids == ["env-1", "env-2"]


def test_subscribe_generator(redis_client: redis.Redis) -> None:
    gen = subscribe(redis_client, NAMES, streams=("dead",), timeout_s=5)
    stop = threading.Event()

    def keep_publishing() -> None:  # pub/sub is lossy: publish until the subscriber has it
        while not stop.wait(0.05):
            publish(redis_client, NAMES, [(NAMES.dead, _envelope(3))], maxlen=10)

    publisher = threading.Thread(target=keep_publishing)
    publisher.start()
    try:
        assert next(gen).id == "env-3"
    finally:
        stop.set()
        gen.close()
        publisher.join()


def test_example_consumer_prints_envelopes_and_stops_on_sigterm(
    redis_url: str, redis_client: redis.Redis
) -> None:
    _fill(redis_client, [41])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    env.update({"REDIS_URL": redis_url, "PYTHONPATH": str(REPO)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "fin_relay.producer.examples", "ex"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "job j41 ok" in first
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert StreamConsumer(redis_client, NAMES, group="ex", consumer="x").seen("env-41")

"""The producer against a real Celery worker calling the Fin simulator over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.names import Names
from fin_relay.producer import Producer
from fin_relay.producer.consumer import StreamConsumer
from tests.fixtures.worker import wait_for_result
from tests.producer.helpers import USER, settings_for

pytestmark = pytest.mark.integration
NAMES = Names("fin")


@pytest.fixture
def running_worker(
    fin_simulator: Callable[..., Any], celery_worker_proc: Callable[..., Any]
) -> Any:
    """A simulator and one worker calling it; returns the simulator handle."""
    sim = fin_simulator()
    celery_worker_proc(base_url=sim.base_url, concurrency=4)
    return sim


def _read_until(consumer: StreamConsumer, job_id: str, timeout_s: float = 30.0) -> Envelope:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for delivery in consumer.read(count=50, block_ms=500):
            consumer.ack(delivery)
            if delivery.envelope is not None and delivery.envelope.data.get("job_id") == job_id:
                return delivery.envelope
    raise TimeoutError(f"no result for {job_id} through the consumer group")


def test_typed_enqueue_runs_and_the_result_is_read_through_a_consumer_group(
    running_worker: Any, producer: Producer, redis_client: redis.Redis
) -> None:
    consumer = StreamConsumer(redis_client, NAMES, group="app", consumer="app-1")
    consumer.ensure_group()
    handle = producer.start(
        conversation_id="e2e-1",
        user=USER,
        message="Where is my order?",
        metadata={"order": 9},
        correlation_id="corr-9",
    )
    outcome = _read_until(consumer, handle.id)
    assert outcome.type == "call.succeeded", outcome.data
    assert outcome.data["metadata"] == {"order": 9}
    assert outcome.data["correlation_id"] == "corr-9"
    assert handle.wait(timeout_s=5).id == outcome.id
    assert outcome.data["seq"] == 1  # the sequence number the producer handed out
    # the timestamp stamped at enqueue is the one Fin received
    [request] = [r for r in running_worker.control.requests() if r["conversation_id"] == "e2e-1"]
    assert request["message_timestamp"] == outcome.data["request"]["message"]["timestamp"]
    # the conversation state is readable from Python
    state = producer.get_conversation("e2e-1")
    assert state.status is not None


def test_async_enqueue_and_wait_with_a_worker(running_worker: Any, redis_url: str) -> None:
    async def scenario() -> list[Envelope]:
        async with Producer(settings_for(redis_url)) as p:
            first = await p.start_async(conversation_id="e2e-a", user=USER, message="one")
            second = await p.capabilities_async(user=USER)
            return [
                await first.wait_async(timeout_s=30),
                await second.wait_async(timeout_s=30),
            ]

    outcomes = asyncio.run(scenario())
    assert [o.type for o in outcomes] == ["call.succeeded", "call.succeeded"], [
        json.dumps(o.data) for o in outcomes
    ]
    assert [o.data["operation"] for o in outcomes] == ["start", "capabilities"]


def test_celery_send_task_path_runs(running_worker: Any, redis_url: str) -> None:
    with Producer(settings_for(redis_url), use_celery=True) as p:
        handle = p.csat(conversation_id="e2e-c", rating="good", job_id="via-celery")
        assert handle.wait(timeout_s=30).type in ("call.succeeded", "call.failed")


BARE_CELERY = """
import sys
from celery import Celery

app = Celery(broker=sys.argv[1])
result = app.send_task(
    "fin.start",
    kwargs={
        "conversation_id": "bare-1",
        "user": {"id": "u-bare"},
        "message": {"author": "user", "body": "sent by a bare Celery client"},
        "relay": {"metadata": {"from": "bare"}},
    },
    queue="fin.calls",
)
print(result.id)
"""


def test_bare_celery_send_task_imports_nothing_from_the_project(
    running_worker: Any, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    script = tmp_path / "bare.py"
    script.write_text(textwrap.dedent(BARE_CELERY))
    # run from an empty directory with no PYTHONPATH: fin_relay is not importable by path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-I", str(script), redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    outcome = wait_for_result(redis_client, job_id, timeout_s=30)
    assert outcome.type == "call.succeeded", outcome.data
    assert outcome.data["metadata"] == {"from": "bare"}
    assert [r["conversation_id"] for r in running_worker.control.requests()] == ["bare-1"]


def test_full_loop_replies_reach_fin_in_enqueue_order(
    fin_simulator: Callable[..., Any],
    celery_worker_proc: Callable[..., Any],
    ingest_server: Any,
    producer: Producer,
) -> None:
    """Simulator webhooks -> ingest -> worker: each reply waits for Fin's turn, in order."""
    from tests.fixtures.ingest import TEST_SECRET

    sim = fin_simulator(callback_url=ingest_server.webhook_url, secret=TEST_SECRET)
    celery_worker_proc(base_url=sim.base_url, concurrency=4)
    running_worker = sim
    handles = [producer.start(conversation_id="e2e-o", user=USER, message="m0")]
    handles += [
        producer.reply(conversation_id="e2e-o", user=USER, message=f"m{i}") for i in range(1, 4)
    ]
    outcomes = [h.wait(timeout_s=60) for h in handles]
    assert all(o.type == "call.succeeded" for o in outcomes), [o.data for o in outcomes]
    seqs = [o.data.get("seq") for o in outcomes]
    assert seqs == [1, 2, 3, 4]
    sent = [
        r["message_timestamp"]
        for r in running_worker.control.requests()
        if r["conversation_id"] == "e2e-o" and r["status"] == 200
    ]
    assert sent == [o.data["request"]["message"]["timestamp"] for o in outcomes]

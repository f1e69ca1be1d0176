"""Per-conversation order for every producer (Redis broker): the worker transport's take
numbers a conversation's call jobs as the broker hands them out, so Fin receives them in the
order the broker received them, whoever enqueued them (a plain Celery ``send_task``, the
``Producer``, a raw LPUSH), across two worker processes of concurrency 4.

Fin here takes 300 ms per call and ends each turn with Intercom's 2.15 webhooks, sent through a
real ingest; a reply may reach Fin only after the previous turn's ``awaiting_user_reply``.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from fin_relay.contract.names import CALLS_QUEUE, Names
from fin_relay.contract.settings import ProducerSettings
from fin_relay.producer import Producer
from tests.fixtures.ingest import TEST_SECRET
from tests.fixtures.worker import (
    enqueue_job,
    reply_kwargs,
    start_kwargs,
    wait_for_result,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.redis_broker]
N = Names("fin")
CALL_MS = 300


@pytest.fixture
def plain_client(redis_url: str) -> Iterator[Celery]:
    """A plain Celery client, as another service would have: stock kombu, nothing of ours."""
    app = Celery("plain-client", broker=redis_url, set_as_current=False)
    yield app
    app.close()


def plain_send(app: Celery, task: str, kwargs: dict[str, Any]) -> str:
    job_id = str(uuid.uuid4())
    app.send_task(task, kwargs=kwargs, task_id=job_id, queue=CALLS_QUEUE)
    return job_id


@pytest.fixture
def fin_with_ingest(fin_simulator: Callable, start_ingest: Callable, redis_url: str) -> Any:
    """The simulator at 300 ms per call, its webhooks signed for and sent to a real ingest."""
    ingest = start_ingest(redis_url)
    sim = fin_simulator(callback_url=ingest.webhook_url, secret=TEST_SECRET, reply_delay_ms=100)
    sim.control.set_faults({op: {"latency_ms": CALL_MS} for op in ("start", "reply")})
    return sim


def assert_fin_saw_in_order(sim: Any, conv: str, bodies: list[str]) -> list[dict[str, Any]]:
    """Fin received ``bodies`` in this order, one call at a time, each reply only after the
    previous turn's ``awaiting_user_reply`` webhook."""
    calls = [r for r in sim.control.requests() if r["conversation_id"] == conv]
    assert [r["status"] for r in calls] == [200] * len(bodies), calls
    assert [r["body"]["message"]["body"] for r in calls] == bodies
    assert [r["endpoint"] for r in calls] == ["start"] + ["reply"] * (len(bodies) - 1)
    turn_ends = sorted(
        w["time_ms"]
        for w in sim.control.webhooks()
        if w["conversation_id"] == conv and w["event_status"] == "awaiting_user_reply"
    )
    for i in range(1, len(calls)):
        # no overlap: the previous call took CALL_MS, and its turn ended before this one
        assert calls[i]["time_ms"] >= calls[i - 1]["time_ms"] + CALL_MS, (i, calls)
        assert calls[i]["time_ms"] >= turn_ends[i - 1], (i, calls[i]["time_ms"], turn_ends)
    return calls


@pytest.fixture
def two_workers(fin_with_ingest: Any, celery_worker_proc: Callable) -> Any:
    """Two worker processes of concurrency 4 calling that Fin; -> the simulator."""
    for _ in range(2):
        celery_worker_proc(base_url=fin_with_ingest.base_url, concurrency=4)
    return fin_with_ingest


def assert_succeeded_in_order(redis_client: redis.Redis, jobs: list[str]) -> None:
    """Every job succeeded, numbered 1..n in the order they were sent."""
    envs = [wait_for_result(redis_client, j, timeout_s=60) for j in jobs]
    assert [e.type for e in envs] == ["call.succeeded"] * len(jobs), [e.data for e in envs]
    assert [e.data["seq"] for e in envs] == list(range(1, len(jobs) + 1))


def test_plain_send_task_start_and_replies_reach_fin_in_order(
    redis_client: redis.Redis, two_workers: Any, plain_client: Celery
) -> None:
    sim = two_workers
    conv = f"c-plain-{uuid.uuid4().hex[:6]}"
    bodies = [f"m{i}" for i in range(5)]
    jobs = [plain_send(plain_client, "fin.start", start_kwargs(conv, bodies[0]))]
    for body in bodies[1:]:
        time.sleep(0.001)  # the scenario: sends 1 ms apart
        jobs.append(plain_send(plain_client, "fin.reply", reply_kwargs(conv, body)))
    assert_succeeded_in_order(redis_client, jobs)
    assert_fin_saw_in_order(sim, conv, bodies)


def test_producer_and_plain_clients_mixed_follow_broker_order(
    redis_url: str, redis_client: redis.Redis, two_workers: Any, plain_client: Celery
) -> None:
    sim = two_workers
    conv = f"c-mixed-{uuid.uuid4().hex[:6]}"
    bodies = [f"m{i}" for i in range(6)]
    settings = ProducerSettings(redis_url=redis_url)
    with Producer(settings) as producer:
        jobs = [producer.start(**start_kwargs(conv, bodies[0])).id]
        for i, body in enumerate(bodies[1:], start=1):
            if i % 3 == 1:
                jobs.append(plain_send(plain_client, "fin.reply", reply_kwargs(conv, body)))
            elif i % 3 == 2:
                jobs.append(enqueue_job(redis_client, "fin.reply", reply_kwargs(conv, body)))
            else:
                jobs.append(producer.reply(**reply_kwargs(conv, body)).id)
    assert_succeeded_in_order(redis_client, jobs)
    assert_fin_saw_in_order(sim, conv, bodies)


class BlackHole:
    """A Fin that accepts connections and reads, and never answers: a worker calling it holds
    its job in flight until it is killed."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.received = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            if b"/fin/start" in data:
                self.received.set()

    def close(self) -> None:
        self._sock.close()
        for conn in self._conns:
            conn.close()


def test_kill_9_of_the_worker_holding_the_start_keeps_the_start_first(
    redis_client: redis.Redis,
    fin_with_ingest: Any,
    celery_worker_proc: Callable,
    plain_client: Celery,
) -> None:
    """Worker A takes the start (number 1) and hangs in its call; worker B takes the four
    replies (numbers 2-5), which wait for their order. A is SIGKILLed: its start goes back to
    the queue once A's broker lease runs out, B calls it first, then the replies in order."""
    sim = fin_with_ingest
    hole = BlackHole()
    try:
        a = celery_worker_proc(base_url=f"http://127.0.0.1:{hole.port}", concurrency=4)
        conv = f"c-kill-{uuid.uuid4().hex[:6]}"
        bodies = [f"m{i}" for i in range(5)]
        start = plain_send(plain_client, "fin.start", start_kwargs(conv, bodies[0]))
        assert hole.received.wait(30), a.logs()[-2000:]
        assert redis_client.hget(N.job(start), "seq") == "1"  # numbered at the take
        celery_worker_proc(base_url=sim.base_url, concurrency=4)
        replies = [
            plain_send(plain_client, "fin.reply", reply_kwargs(conv, body)) for body in bodies[1:]
        ]
        # B took every reply (numbered 2-5) and holds them for their order
        wait_until(
            lambda: all(redis_client.hget(N.job(j), "seq") for j in replies),
            30,
            "the replies to be taken and numbered",
        )
        assert [int(redis_client.hget(N.job(j), "seq") or 0) for j in replies] == [2, 3, 4, 5]
        killed_at = time.time()
        os.kill(a.pid, signal.SIGKILL)
        envs = [wait_for_result(redis_client, j, timeout_s=90) for j in [start, *replies]]
        assert [e.type for e in envs] == ["call.succeeded"] * 5, [e.data for e in envs]
        assert [e.data["seq"] for e in envs] == [1, 2, 3, 4, 5]  # the redelivery kept its 1
        calls = assert_fin_saw_in_order(sim, conv, bodies)
        waited_s = calls[0]["time_ms"] / 1000 - killed_at
        # the start waits for the dead worker's broker lease (10 s) plus one renewal (2 s)
        # and a deferral's countdown; the replies' hold bound (120 s) is far away
        assert waited_s < 30, waited_s
        print(f"start reached Fin {waited_s:.1f} s after the kill")
    finally:
        hole.close()

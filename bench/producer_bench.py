"""Producer benchmark: enqueue rate of fin-relay's producer vs a bare Celery ``send_task``.

All variants enqueue the same ``fin.start`` job (a user, a ~60-byte message, metadata) onto
the same private Redis (``EmbeddedRedis``, no persistence), one process, one after another,
interleaved over ``--reps`` rounds; the queue is emptied between runs. No worker runs.

(a) ``celery``: ``Celery(broker=url).send_task("fin.start", kwargs=..., queue="fin.calls")`` —
    the baseline a service would otherwise use (no validation, no timestamp, no idempotency);
(b) ``producer``: ``Producer.start(...)`` — pydantic validation, timestamp stamping, the
    ``relay`` options, a sequence number, and one EVALSHA of ``producer_enqueue.lua`` (LPUSH);
(c) ``producer+id``: the same with a caller-chosen ``job_id`` (the idempotency marker, SET NX);
(d) ``async``: ``await Producer.start_async(...)``, one at a time (latency-bound, like a web
    handler); (e) ``async-c32``: 32 concurrent ``start_async`` calls in flight.

Run: ``.venv/bin/python -m fin_relay.bench.producer_bench [--jobs 5000] [--reps 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery

from fin_relay.contract.settings import ProducerSettings
from fin_relay.embedded_redis import EmbeddedRedis
from fin_relay.producer import Producer

USER = {"id": "user-42", "name": "Ada Lovelace", "email": "ada@example.com"}
TEXT = "Hello, my order #4711 has not arrived yet. Can you help me?"
META = {"ticket": "T-4711", "tenant": "acme"}


def celery_kwargs(i: int) -> dict[str, Any]:
    return {
        "conversation_id": f"bench-{i % 500}",
        "user": USER,
        "message": {"author": "user", "body": TEXT},
        "relay": {"metadata": META},
    }


def run_celery(app: Any, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        app.send_task("fin.start", kwargs=celery_kwargs(i), queue="fin.calls")
    return time.perf_counter() - t0


def run_producer(producer: Producer, n: int, with_id: bool = False) -> float:
    tag = uuid.uuid4().hex[:8]
    t0 = time.perf_counter()
    for i in range(n):
        if with_id:
            producer.start(
                conversation_id=f"bench-{i % 500}", user=USER, message=TEXT, metadata=META,
                job_id=f"{tag}-{i}",
            )  # fmt: skip
        else:
            producer.start(
                conversation_id=f"bench-{i % 500}", user=USER, message=TEXT, metadata=META
            )
    return time.perf_counter() - t0


def run_async(producer: Producer, n: int, concurrency: int) -> float:
    async def one(i: int) -> None:
        await producer.start_async(
            conversation_id=f"bench-{i % 500}", user=USER, message=TEXT, metadata=META
        )

    async def scenario() -> float:
        await one(-1)  # connect first (not timed)
        t0 = time.perf_counter()
        if concurrency == 1:
            for i in range(n):
                await one(i)
        else:
            sem = asyncio.Semaphore(concurrency)

            async def bounded(i: int) -> None:
                async with sem:
                    await one(i)

            await asyncio.gather(*(bounded(i) for i in range(n)))
        elapsed = time.perf_counter() - t0
        await producer.aclose()
        return elapsed

    return asyncio.run(scenario())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    with EmbeddedRedis() as server:
        client = server.client()
        app = Celery("bench", broker=server.url, set_as_current=False)
        app.send_task("fin.start", kwargs=celery_kwargs(0), queue="fin.calls")  # warm up
        producer = Producer(ProducerSettings(redis_url=server.url))
        run_producer(producer, 50)
        variants: dict[str, Callable[[], float]] = {
            "celery send_task": lambda: run_celery(app, args.jobs),
            "producer.start": lambda: run_producer(producer, args.jobs),
            "producer.start job_id": lambda: run_producer(producer, args.jobs, with_id=True),
            "start_async c1": lambda: run_async(producer, args.jobs, 1),
            "start_async c32": lambda: run_async(producer, args.jobs, 32),
        }
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.reps):
            for name, fn in variants.items():
                client.flushall()
                elapsed = fn()
                assert client.llen("fin.calls") >= args.jobs, name
                rates[name].append(args.jobs / elapsed)
        producer.close()
        app.close()
    print(report(rates, args))
    return 0


def report(rates: dict[str, list[float]], args: argparse.Namespace) -> str:
    base = statistics.median(rates["celery send_task"])
    lines = [
        f"Producer enqueue rate, {args.jobs} fin.start jobs x {args.reps} rounds "
        "(median; one process; embedded Redis)",
        "",
        "| variant | jobs/s (median) | µs per enqueue | vs send_task | runs |",
        "|---|---|---|---|---|",
    ]
    for name, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(
            f"| {name} | {median:,.0f} | {1e6 / median:,.0f} | {median / base:.2f}x | {runs} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

"""Scenarios 5 and 6: producer enqueue rate, and the simulator's own throughput.

* Producer: reuses ``fin_relay.bench.producer_bench`` — ``Producer.start`` vs a bare Celery
  ``send_task`` of the same job, same process, same Redis, interleaved rounds, median.
* Simulator: reuses ``fin_relay.simulator.loadcheck.run_check`` — ``/fin/start`` at 50 ms latency
  with webhooks on (delivered to a fast sink) vs a bare ASGI app sleeping 50 ms, same stack,
  wrk ``-t1 -c200``.
"""

from __future__ import annotations

import statistics
from typing import Any

from celery import Celery

from fin_relay.bench import producer_bench as pb
from fin_relay.contract.settings import ProducerSettings
from fin_relay.producer import Producer


def run_producer(redis: Any, quick: bool) -> dict[str, Any]:
    """``producer.start`` vs ``send_task``: jobs/s (median of rounds) and the ratio."""
    jobs, rounds = (1000, 1) if quick else (3000, 3)
    client = redis.client()
    app = Celery("bench", broker=redis.url, set_as_current=False)
    producer = Producer(ProducerSettings(redis_url=redis.url))
    rates: dict[str, list[float]] = {"send_task": [], "producer": []}
    try:
        client.flushall()
        app.send_task("fin.start", kwargs=pb.celery_kwargs(0), queue="fin.calls")  # warm up
        pb.run_producer(producer, 50)
        for _ in range(rounds):
            client.flushall()
            rates["send_task"].append(jobs / pb.run_celery(app, jobs))
            client.flushall()
            rates["producer"].append(jobs / pb.run_producer(producer, jobs))
    finally:
        producer.close()
        app.close()
        client.flushall()
        client.close()
    medians = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "jobs": jobs,
        "rounds": rounds,
        "rates": rates,
        "median": medians,
        "ratio": medians["producer"] / medians["send_task"],
    }


def run_simulator(quick: bool) -> dict[str, Any]:
    """The simulator vs a bare 50 ms ASGI app (loadcheck), webhooks included."""
    from fin_relay.simulator.loadcheck import run_check

    duration_s = 3 if quick else 10
    result = run_check(duration_s=duration_s, connections=200, latency_ms=50.0)
    result["command"] = (
        f"python -m fin_relay.simulator.loadcheck --duration-s {duration_s} --connections 200 "
        "--latency-ms 50"
    )
    return result

"""Steady load with reconciliation: 50 webhooks/s through the real ingest and 50 jobs/s to two
real workers (simulator subprocess, 20 ms latency), for 60 s (5 minutes with
``FIN_RELAY_RELIABILITY_FULL=1``).

* received = published: every webhook answered 202 is on ``{ns}:events`` once, and the stream
  holds nothing else (entries counted);
* enqueued = resulted: one ``call.succeeded`` per job, nothing else on ``{ns}:results``;
* RSS of every process (ingest, both workers, simulator, Redis) at the first sample (20 s in the
  quick run, 60 s in the full run) vs the end. Quick run: printed only (a minute is too short to
  tell growth from warm-up). Full run: asserted within 10% for fin-relay's own processes
  (ingest, workers); the simulator (bounded request log) and Redis (streams, job hashes and
  de-dup marks are *kept data*, not a leak) are reported, with Redis's dataset size beside.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from fin_relay.embedded_redis import EmbeddedRedis
from tests.fixtures.ingest import IngestServer, webhook_headers
from tests.fixtures.worker import enqueue_job, start_kwargs
from tests.reliability.helpers import (
    FULL,
    NS,
    broker_drained,
    event_id_of,
    fin_replied,
    report,
    result_counts,
    rss_kib,
    stream_ids,
    wait_for,
)

DURATION_S = 300.0 if FULL else 60.0
FIRST_SAMPLE_S = 60.0 if FULL else 20.0
WEBHOOKS_PER_S = 50
JOBS_PER_S = 50
MAX_IN_FLIGHT = 64
RSS_TOLERANCE = 0.10

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(int(DURATION_S) + 360)]


def sample_rss(pids: dict[str, int]) -> dict[str, int | None]:
    return {name: rss_kib(pid) for name, pid in pids.items()}


async def drive(
    url: str, client: redis.Redis, pids: dict[str, int]
) -> tuple[dict[int, int | str], list[str], list[dict[str, int | None]]]:
    """Fire one webhook and one job per tick on a fixed schedule; sample RSS on the way."""
    statuses: dict[int, int | str] = {}
    jobs: list[str] = []
    samples: list[dict[str, int | None]] = []
    ticks = int(DURATION_S * WEBHOOKS_PER_S)
    assert JOBS_PER_S == WEBHOOKS_PER_S  # one of each per tick
    sem = asyncio.Semaphore(MAX_IN_FLIGHT)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:

        async def webhook(i: int) -> None:
            body = json.dumps(fin_replied(f"load-e-{i}", f"load-m-{i}")).encode()
            headers = webhook_headers(body)
            try:
                response = await http.post(url, content=body, headers=headers)
                statuses[i] = response.status_code
            except httpx.HTTPError as exc:
                statuses[i] = type(exc).__name__
            finally:
                sem.release()

        started = loop.time()
        tasks = []
        sampled = False
        for i in range(ticks):
            delay = started + i / WEBHOOKS_PER_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await sem.acquire()
            tasks.append(asyncio.create_task(webhook(i)))
            jobs.append(
                enqueue_job(client, "fin.start", start_kwargs(f"load-j-{i}"), sequence=True)
            )
            if not sampled and loop.time() - started >= FIRST_SAMPLE_S:
                samples.append(sample_rss(pids))
                sampled = True
        await asyncio.gather(*tasks)
    samples.append(sample_rss(pids))
    return statuses, jobs, samples


def test_steady_load_reconciles_and_memory_stays_flat(
    redis_server: EmbeddedRedis,
    redis_url: str,
    redis_client: redis.Redis,
    sim_process: Callable[..., Any],
    start_ingest: Callable[..., IngestServer],
    worker_procs: Callable[..., Any],
) -> None:
    sim = sim_process(faults={"*": {"latency_ms": 20}})
    ingest = start_ingest(redis_url)
    workers = [worker_procs(redis_url, base_url=sim.base_url, concurrency=8) for _ in range(2)]
    assert redis_server.process is not None
    pids = {
        "ingest": ingest.process.pid,
        "worker-0": workers[0].pid,
        "worker-1": workers[1].pid,
        "simulator": sim.pid,
        "redis": redis_server.process.pid,
    }
    statuses, jobs, samples = asyncio.run(drive(ingest.webhook_url, redis_client, pids))
    accepted = {event_id_of(f"load-m-{i}") for i, status in statuses.items() if status == 202}
    wait_for(
        lambda: (
            redis_client.xlen(NS.events) >= len(accepted)
            and len(result_counts(redis_client)[0]) >= len(jobs)
            and broker_drained(redis_client)
        ),
        180,
        "every accepted event published and every job resulted",
        step_s=0.5,
    )
    ids = stream_ids(redis_client, NS.events)
    succeeded, types = result_counts(redis_client)
    first, last = samples[0], samples[-1]
    growth = {
        name: round((last[name] or 0) / first[name] - 1, 3) if first[name] else None
        for name in pids
    }
    report(
        "test_load_reconciliation::test_steady_load_reconciles_and_memory_stays_flat",
        full=FULL,
        duration_s=DURATION_S,
        webhooks=len(statuses),
        webhook_statuses=dict(Counter(str(s) for s in statuses.values())),
        published=len(ids),
        jobs=len(jobs),
        resulted=sum(succeeded.values()),
        result_types=dict(types),
        rss_kib_first=first,
        rss_kib_last=last,
        rss_growth=growth,
        redis_dataset_bytes=redis_client.info("memory").get("used_memory_dataset"),
    )
    # received = published (entries, not distinct ids), and nothing unaccepted was published
    assert len(accepted) > 0
    assert len(ids) == len(accepted) and set(ids) == accepted
    # enqueued = resulted
    assert set(succeeded) == set(jobs) and all(c == 1 for c in succeeded.values())
    assert dict(types) == {"call.succeeded": len(jobs)}
    if FULL:
        for name in ("ingest", "worker-0", "worker-1"):
            assert growth[name] is not None and growth[name] <= RSS_TOLERANCE, (name, growth)

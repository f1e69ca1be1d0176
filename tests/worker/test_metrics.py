"""Worker metrics on FIN_RELAY_METRICS_PORT: calls by outcome, 429s, dead letters, quota."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import redis

from fin_relay.embedded_redis import free_port
from tests.fixtures.worker import enqueue_job, start_kwargs, wait_for_result

pytestmark = pytest.mark.integration


def _value(text: str, metric: str) -> float:
    match = re.search(rf"^{re.escape(metric)} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{metric} not exposed:\n{text[:2000]}"
    return float(match.group(1))


def test_worker_exposes_call_outcomes_and_quota(
    redis_client: redis.Redis, fin_simulator: Any, celery_worker_proc: Any
) -> None:
    sim = fin_simulator(rate_limit_per_minute=6000)
    port = free_port()
    celery_worker_proc(
        base_url=sim.base_url, concurrency=2, env={"FIN_RELAY_METRICS_PORT": str(port)}
    )
    ok = enqueue_job(redis_client, "fin.start", start_kwargs("m-ok"))
    assert wait_for_result(redis_client, ok).type == "call.succeeded"
    sim.control.set_faults(start={"queue": [400]})
    bad = enqueue_job(redis_client, "fin.start", start_kwargs("m-bad"))
    assert wait_for_result(redis_client, bad).type == "call.failed"
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert _value(text, 'fin_relay_calls_total{operation="start",outcome="succeeded"}') == 1
    assert _value(text, 'fin_relay_calls_total{operation="start",outcome="failed"}') == 1
    assert _value(text, 'fin_relay_dead_letters_total{kind="job",reason="fin_error"}') == 1
    assert 0 <= _value(text, "fin_relay_quota_remaining") < 1000
    assert _value(text, 'fin_relay_call_seconds_count{operation="start"}') == 2


def test_worker_logs_one_json_line_per_job_outcome(
    redis_url: str, redis_client: redis.Redis, fin_simulator: Any, celery_worker_proc: Any
) -> None:
    import json

    sim = fin_simulator()
    worker = celery_worker_proc(base_url=sim.base_url, concurrency=2)
    job = enqueue_job(redis_client, "fin.start", start_kwargs("log-1", body="secret body text"))
    assert wait_for_result(redis_client, job).type == "call.succeeded"
    # Celery's own client puts full argument reprs into the message (and Celery logs them)
    from celery import Celery

    from tests.fixtures import broker

    bare = Celery(broker=broker.ACTIVE_AMQP_URL or redis_url, set_as_current=False)
    other = bare.send_task(
        "fin.start", kwargs=start_kwargs("log-2", body="secret body two"), queue="fin.calls"
    ).id
    bare.close()
    assert wait_for_result(redis_client, other).type == "call.succeeded"
    records = [json.loads(line) for line in worker.logs().splitlines() if line.startswith("{")]
    mine = [r for r in records if job in r.get("msg", "")]
    assert mine, "no JSON log line names the job"
    assert any("log-1" in r["msg"] for r in mine)  # with the conversation id
    logs = worker.logs()
    assert "secret body text" not in logs and "secret body two" not in logs
    assert sim.token not in logs

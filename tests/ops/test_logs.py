"""Logs and ``/metrics`` of the real processes: ``fin-relay ingest`` and ``fin-relay worker``
(and ``celery -A fin_relay.worker.app worker``) writing to a file, so JSON lines.

* one timestamp format: ISO-8601 UTC with milliseconds and ``Z``, on every line;
* structured context as JSON fields (``job_id``, ``conversation_id``, ``op``, ``outcome``);
* one start-up line per process saying where it listens or what it consumes (the broker's
  password masked, and in no line at all);
* each process's ``/metrics`` lists its own series only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fin_relay.contract.names import Names
from fin_relay.embedded_redis import free_port
from fin_relay.observability import INGEST_METRICS, WORKER_METRICS
from tests.fixtures.ingest import IngestServer
from tests.fixtures.worker import (
    WorkerProcess,
    enqueue_job,
    spawn_worker,
    start_kwargs,
    wait_for_result,
    wait_ready,
    wait_until,
    worker_env,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("fin-relay")
FIN_RELAY = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "fin_relay.cli"]
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
WORKER_FAMILIES = [m.family for m in WORKER_METRICS]
INGEST_FAMILIES = [m.family for m in INGEST_METRICS]


def json_lines(text: str, *, strict: bool = True) -> list[dict[str, Any]]:
    """Every line of a log; each must be one JSON object (the process writes to a file).
    ``strict=False``: lines that are not JSON are skipped."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if not strict:
                continue
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(record, dict), line
        out.append(record)
    return out


def families(exposition: str) -> set[str]:
    """The metric families of a Prometheus text exposition (its ``# TYPE`` lines; a counter's
    ``_total`` and ``_created`` suffixes removed)."""
    types = re.findall(r"^# TYPE (\S+) ", exposition, re.M)
    return {re.sub(r"_(total|created)$", "", name) for name in types}


# --- the ingest ------------------------------------------------------------------------------


def _post_event(server: IngestServer, conversation_id: str) -> int:
    from datetime import UTC, datetime

    from fin_relay.contract.fin_api import format_fin_time

    body = json.dumps(
        {
            "event_name": "fin_status_updated",
            "conversation_id": conversation_id,
            "status": "complete",
            "created_at_ms": format_fin_time(datetime.now(UTC)),
        }
    ).encode()
    return httpx.post(server.webhook_url, content=body, headers=server.headers(body)).status_code


def test_ingest_start_up_line_access_log_timestamps_and_own_metrics(
    ingest_server: IngestServer,
) -> None:
    assert _post_event(ingest_server, "log-1") == 202
    metrics = httpx.get(f"{ingest_server.url}/metrics", timeout=5).text
    wait_until(ingest_server.access_lines, 10, "the access log line")
    records = json_lines(ingest_server.log_text())
    for record in records:
        assert ISO_MS.match(str(record.get("ts"))), record
    [started] = [r for r in records if "listening on" in str(r.get("msg"))]
    assert f"listening on http://127.0.0.1:{ingest_server.port}" in started["msg"]
    assert started["port"] == ingest_server.port and started["level"] == "info"
    assert started["url"] == ingest_server.url
    [access] = [r for r in records if r.get("log") == "access"]
    assert access["conversation_id"] == "log-1" and access["status"] == 202
    assert records.index(started) < records.index(access)

    shown = families(metrics)
    for name in INGEST_FAMILIES:
        assert name in shown, (name, shown)
    for name in WORKER_FAMILIES:
        assert name not in shown, f"worker series {name} on the ingest's /metrics"


def test_ingest_multiprocess_metrics_list_no_worker_series(
    start_ingest: Callable[..., IngestServer], redis_url: str, tmp_path: Path
) -> None:
    """A ``PROMETHEUS_MULTIPROC_DIR`` shared with a worker (one that counted calls): the
    ingest's ``/metrics`` still lists only its own series."""
    shared = tmp_path / "prom"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONPATH": str(REPO)}
    worker_side = (
        "from fin_relay.worker import metrics\n"  # what a worker imports: its series
        "metrics.outcome('start', 'succeeded', None, 12.0)\n"
        "metrics.rate_limited()\n"
    )
    subprocess.run([sys.executable, "-c", worker_side], env=env, check=True, timeout=60)
    assert list(shared.iterdir()), "the worker wrote no metric files"
    server = start_ingest(redis_url, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(shared)})
    assert _post_event(server, "mp-1") == 202
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    shown = families(metrics)
    assert 'fin_relay_webhooks_total{status="202"} 1.0' in metrics
    for name in WORKER_FAMILIES:
        assert name not in shown, f"worker series {name} on the ingest's /metrics"


# --- the worker ------------------------------------------------------------------------------

PASSWORD = "s3cret-" + uuid.uuid4().hex[:8]
USERNAME = "fin-relay-logs"


@pytest.fixture
def password_url(redis_url: str, redis_client: redis.Redis) -> Iterator[str]:
    """The test Redis through an ACL user with a password: the URL a worker must mask."""
    redis_client.acl_setuser(
        USERNAME, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], channels=["*"],
        commands=["+@all"], reset=True,
    )  # fmt: skip
    host_port = redis_url.split("//", 1)[1]
    yield f"redis://{USERNAME}:{PASSWORD}@{host_port}"
    redis_client.acl_deluser(USERNAME)


@pytest.fixture
def fin_relay_worker(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``fin-relay worker`` (the real script) started with the test settings; stopped after."""
    started: list[WorkerProcess] = []

    def start(base_url: str, extra: dict[str, str]) -> WorkerProcess:
        hostname = f"logs-{uuid.uuid4().hex[:6]}@test"
        worker = spawn_worker(
            [*FIN_RELAY, "worker", "-c", "2", "-n", hostname],
            worker_env(redis_url, base_url, "sim-token", "fin", extra),
            tmp_path / f"fin-relay-worker-{len(started)}.log",
            hostname=hostname,
            namespace="fin",
        )
        started.append(worker)
        wait_ready(worker, redis_url, 60)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout_s=20)


def _start_up_line(records: list[dict[str, Any]]) -> dict[str, Any]:
    [line] = [r for r in records if " consuming " in str(r.get("msg"))]
    return line


@pytest.mark.integration
@pytest.mark.redis_broker
def test_worker_lines_are_structured_and_its_metrics_its_own(
    redis_url: str,
    redis_client: redis.Redis,
    password_url: str,
    fin_simulator: Callable[..., Any],
    fin_relay_worker: Callable[..., WorkerProcess],
    celery_worker_proc: Callable[..., WorkerProcess],
) -> None:
    sim = fin_simulator()
    port = free_port()
    worker = fin_relay_worker(
        sim.base_url, {"REDIS_URL": password_url, "FIN_RELAY_METRICS_PORT": str(port)}
    )
    job_id = enqueue_job(redis_client, "fin.start", start_kwargs("logs-c1"))
    assert wait_for_result(redis_client, job_id).type == "call.succeeded"
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    def outcome_logged() -> list[dict[str, Any]]:
        return [r for r in json_lines(worker.logs()) if r.get("job_id") == job_id]

    [outcome] = wait_until(outcome_logged, 10, "the job's outcome line")
    records = json_lines(worker.logs())
    for record in records:
        assert ISO_MS.match(str(record.get("ts"))), record
    assert outcome["conversation_id"] == "logs-c1" and outcome["op"] == "start"
    assert outcome["outcome"] == "succeeded" and isinstance(outcome["attempts"], int)
    assert outcome["attempts"] == 1

    started = _start_up_line(records)
    host_port = redis_url.split("//", 1)[1]
    assert started["broker"] == f"redis://{USERNAME}:***@{host_port}"
    assert started["queues"] == ["fin.calls", "fin.events"]
    assert started["hostname"] == worker.hostname and started["pid"] == worker.pid
    assert started["pool"] == "threads" and started["concurrency"] == 2
    assert PASSWORD not in worker.logs()

    shown = families(metrics)
    assert 'fin_relay_calls_total{operation="start",outcome="succeeded"} 1.0' in metrics
    for name in WORKER_FAMILIES:
        assert name in shown, (name, shown)
    for name in INGEST_FAMILIES:
        assert name not in shown, f"ingest series {name} on a worker's /metrics"

    # `celery -A fin_relay.worker.app worker` says what it consumes too (Celery's banner and
    # its warnings before the logging set-up are Celery's text there: not checked)
    other = celery_worker_proc(base_url=sim.base_url, queues="fin.events")
    wait_until(lambda: " consuming " in other.logs(), 10, "the celery -A start-up line")
    assert _start_up_line(json_lines(other.logs(), strict=False))["queues"] == ["fin.events"]
    heartbeat = redis_client.get(Names("fin").worker_heartbeat(other.hostname))
    assert heartbeat is not None

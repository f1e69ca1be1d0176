"""The comparison Celery setups: the simplest *correct* version a competent engineer would write.

Started as ``celery -A fin_relay.bench.naive_celery worker -P <pool> -c <n> -Q <queue>`` with
``REDIS_URL``, ``FIN_API_BASE_URL``, ``FIN_API_TOKEN`` (and ``NAIVE_RATE_LIMIT`` for the
rate-limited task) in the environment.

* ``naive.call`` (queue ``bench.naive``): one ``POST /fin/start`` with the message timestamp
  set, ``raise_for_status()``, then one ``XADD`` of the outcome to ``bench:results`` (the
  "result publish", as fin-relay does); Celery's ``rate_limit`` (per worker: ``NAIVE_RATE_LIMIT``,
  e.g. ``"300/m"`` for two workers sharing 600/min) and ``autoretry_for=(httpx.HTTPError,)``
  with exponential backoff: the usual answer to 429s. HTTP client: one ``httpx.Client`` per
  thread with fin-relay's timeouts (connect 5 s, read 30 s), not the shared-client trap that
  collapses under load (measured at 2–21% of theory). (The bare worker-throughput task is
  ``fin_relay.bench.worker_bench:bare_app``.)
* ``naive.event`` (queue ``bench.events``): the task a FastAPI webhook endpoint ``.delay()``s.

Settings: ``task_acks_late`` (a killed worker does not lose its job), no result backend, JSON;
otherwise Celery's defaults (prefetch multiplier 4).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import httpx
import redis
from celery import Celery

from fin_relay.contract.fin_api import format_fin_time

NAIVE_QUEUE = "bench.naive"
EVENTS_QUEUE = "bench.events"
RESULTS_STREAM = "bench:results"

app = Celery("naive", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:1/0"))
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue=NAIVE_QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_local = threading.local()
_redis_lock = threading.Lock()
_redis: list[redis.Redis] = []


def _client() -> httpx.Client:
    client: httpx.Client | None = getattr(_local, "client", None)
    if client is None:
        client = httpx.Client(
            base_url=os.environ["FIN_API_BASE_URL"],
            headers={
                "Authorization": f"Bearer {os.environ['FIN_API_TOKEN']}",
                "Intercom-Version": "2.15",
            },
            timeout=httpx.Timeout(30.0, connect=5.0),
        )
        _local.client = client
    return client


def _results() -> redis.Redis:
    with _redis_lock:
        if not _redis:
            _redis.append(redis.Redis.from_url(os.environ["REDIS_URL"]))
        return _redis[0]


def _call_fin(conversation_id: str, text: str) -> None:
    from datetime import UTC, datetime

    body = {
        "conversation_id": conversation_id,
        "user": {"id": "user-1", "name": "Bench User"},
        "message": {
            "author": "user",
            "body": text,
            "timestamp": format_fin_time(datetime.now(UTC)),
        },
    }
    response = _client().post("/fin/start", json=body)
    response.raise_for_status()
    _results().xadd(
        RESULTS_STREAM,
        {"conversation_id": conversation_id, "status": response.status_code, "t": time.time()},
    )


@app.task(
    name="naive.call",
    queue=NAIVE_QUEUE,
    rate_limit=os.environ.get("NAIVE_RATE_LIMIT", "300/m"),
    autoretry_for=(httpx.HTTPError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=10,
)
def naive_call(conversation_id: str, text: str = "Hello there") -> None:
    """The rate-limited, auto-retrying version of ``bare.call``."""
    _call_fin(conversation_id, text)


@app.task(name="naive.event", queue=EVENTS_QUEUE)
def naive_event(event: dict[str, Any]) -> None:
    """What a webhook endpoint hands to Celery (not consumed in the benchmark)."""
    _ = event

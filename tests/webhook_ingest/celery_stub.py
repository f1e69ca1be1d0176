"""A test-only Celery app whose ``fin.event`` task records its kwargs in Redis.

Proves that the messages the ingest builds by hand (and the kombu path) are accepted by a real
Celery worker: ``celery -A tests.webhook_ingest.celery_stub worker -P solo -Q fin.events``.
The broker URL comes from ``STUB_BROKER_URL``; received kwargs are RPUSHed as JSON onto
``stub:received``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

BROKER_URL = os.environ.get("STUB_BROKER_URL", "redis://127.0.0.1:1/0")
RECEIVED_KEY = "stub:received"

app = Celery("fin_relay_ingest_stub", broker=BROKER_URL)
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_acks_late=True,
)


@app.task(name="fin.event", shared=False)  # shared=True would register it on every app
def fin_event(**kwargs: Any) -> None:
    client = redis.Redis.from_url(BROKER_URL)
    try:
        client.rpush(RECEIVED_KEY, json.dumps(kwargs))
    finally:
        client.close()

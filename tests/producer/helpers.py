"""Helpers shared by the producer tests."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

from fin_relay.contract.settings import ProducerSettings

USER = {"id": "u-1", "name": "Ada", "email": "ada@example.com"}


def settings_for(url: str, **extra: Any) -> ProducerSettings:
    return ProducerSettings(redis_url=url, **extra)


def queued_messages(client: redis.Redis, queue: str = "fin.calls") -> list[dict[str, Any]]:
    """Decode every Celery message on a queue list (oldest first)."""
    out = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append({"headers": message["headers"], "args": args, "kwargs": kwargs})
    return out

"""celery_wire builds what Celery's own client puts on a Redis broker: a plain
``Celery(broker=redis_url).send_task(...)`` is LPUSHed to a real Redis and read back with
LRANGE, next to ``task_message``'s and the ingest template's message for the same call."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery

from fin_relay.contract import celery_wire
from fin_relay.contract.names import TASK_QUEUES
from fin_relay.webhook_ingest.events import event_bytes, parse_body
from fin_relay.webhook_ingest.message import EventMessageBuilder, event_kwargs, task_id_for

pytestmark = pytest.mark.integration

#: Headers whose values are ours by design: the origin names fin-relay's host and process, and
#: the kwargs repr carries the argument names only (never customer data).
_OWN_HEADERS = {"origin", "kwargsrepr"}
#: Properties whose values differ per sender or per message (same type).
_OWN_PROPERTIES = {"reply_to", "delivery_tag"}


def sent_by_celery(
    client: redis.Redis, url: str, task: str, kwargs: dict[str, Any], **options: Any
) -> dict[str, Any]:
    """The message a plain Celery client LPUSHes for ``send_task``, as on the list."""
    queue = TASK_QUEUES[task]
    app = Celery("plain", broker=url, set_as_current=False)
    try:
        app.send_task(task, kwargs=kwargs, queue=queue, ignore_result=True, **options)
    finally:
        app.close()
    items = client.lrange(queue, 0, -1)
    client.delete(queue)
    assert len(items) == 1
    message: dict[str, Any] = json.loads(items[0])
    return message


def assert_same_wire(
    ours: str | bytes, celery: dict[str, Any], celery_only: frozenset[str] = frozenset()
) -> None:
    """Same envelope, header keys (in order) and types, properties and decoded body;
    ``celery_only`` names properties Celery adds and the message leaves out."""
    message = json.loads(ours)
    assert list(message) == list(celery)
    for key in ("content-type", "content-encoding"):
        assert message[key] == celery[key], key
    headers, celery_headers = message["headers"], celery["headers"]
    assert list(headers) == list(celery_headers)
    for key, value in celery_headers.items():
        assert type(headers[key]) is type(value), key
        if key not in _OWN_HEADERS:
            assert headers[key] == value, key
    properties, celery_properties = message["properties"], celery["properties"]
    celery_properties = {k: v for k, v in celery_properties.items() if k not in celery_only}
    assert list(properties) == list(celery_properties)
    for key, value in celery_properties.items():
        assert type(properties[key]) is type(value), key
        if key not in _OWN_PROPERTIES:
            assert properties[key] == value, key
    assert properties["body_encoding"] == "base64"
    assert json.loads(base64.b64decode(message["body"])) == json.loads(
        base64.b64decode(celery["body"])
    )
    assert celery_wire.read_call(ours) == celery_wire.read_call(json.dumps(celery))


def test_built_messages_are_what_celery_sends(redis_url: str, redis_client: redis.Redis) -> None:
    raw = b'{"event_name":"fin_replied","conversation_id":"c-\xc3\xa9","n":[1,2.5,null]}'
    event_id, received_at_ms = "evt_\u00fc1", 1_700_000_000_000
    kwargs = event_kwargs(parse_body(raw).body, event_id, received_at_ms)
    task_id = task_id_for(event_id)
    celery = sent_by_celery(redis_client, redis_url, "fin.event", kwargs, task_id=task_id)
    assert_same_wire(celery_wire.task_message("fin.event", kwargs, task_id=task_id)[1], celery)
    template = EventMessageBuilder().build_bytes(
        event_bytes(parse_body(raw)), event_id, received_at_ms
    )
    assert_same_wire(template, celery)

    # a call with an ETA and an expiry: both headers ISO 8601 text, as Celery writes them.
    # Celery also sets the AMQP per-message TTL property "expiration", which kombu's Redis
    # transport does not apply; the worker goes by the "expires" header.
    eta = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    expires = eta + timedelta(minutes=5)
    call = {"conversation_id": "c-1", "message": {"body": "hi \u2603"}, "user": {"id": "u"}}
    celery = sent_by_celery(
        redis_client, redis_url, "fin.reply", call, task_id="j-1", eta=eta, expires=expires
    )
    ours = celery_wire.task_message(
        "fin.reply",
        call,
        task_id="j-1",
        eta_iso=eta.isoformat(),
        expires_iso=expires.isoformat(),
    )[1]
    assert_same_wire(ours, celery, celery_only=frozenset({"expiration"}))

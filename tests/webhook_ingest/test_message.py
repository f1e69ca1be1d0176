"""The fast message builder renders exactly what celery_wire.task_message would."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from fin_relay.contract.celery_wire import task_message
from fin_relay.webhook_ingest.events import event_json, parse_body
from fin_relay.webhook_ingest.message import (
    TASK_ID_NAMESPACE,
    EventMessageBuilder,
    event_kwargs,
    task_id_for,
)


def decoded(payload: str) -> dict[str, Any]:
    document = json.loads(payload)
    document["body"] = json.loads(base64.b64decode(document["body"]))
    document["properties"].pop("delivery_tag")
    document["headers"].pop("origin")
    return dict(document)


@pytest.mark.parametrize("event_id", ["evt_0123", "msg_98765", 'we"ird\\id ü %s', ""])
def test_task_id_is_uuid5_of_the_event_id(event_id: str) -> None:
    assert task_id_for(event_id) == str(uuid.uuid5(TASK_ID_NAMESPACE, event_id))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_name":"fin_replied","message":{"id":"1","body":"<p>50% \\u00fc</p>"}}',
        b'{ "event_name" : "x",\n "n": [1, 2.5, null, true], "s": "\xc3\xbc%(tid)s" }',
        b'{"event_name":"x","dup":1,"dup":2}',
    ],
)
def test_builder_matches_task_message(raw: bytes) -> None:
    event = parse_body(raw)
    built = EventMessageBuilder().build(event_json(event), "evt_1", 1_700_000_000_000)
    _tid, reference = task_message(
        "fin.event",
        event_kwargs(event.body, "evt_1", 1_700_000_000_000),
        task_id=task_id_for("evt_1"),
    )
    assert decoded(built) == decoded(reference)
    assert (
        json.loads(built)["properties"]["delivery_tag"]
        != json.loads(reference)["properties"]["delivery_tag"]
    )


def test_lone_surrogates_cannot_be_encoded() -> None:
    event = parse_body(b'{"event_name":"x","s":"\\ud800"}')
    with pytest.raises(UnicodeEncodeError):
        EventMessageBuilder().build(event_json(event), "evt_1", 1)


def test_parts_are_the_rendered_message() -> None:
    """What the kombu path publishes (headers, properties, body bytes) is the Redis payload's
    content, without encoding it and decoding it back."""
    builder = EventMessageBuilder()
    event = parse_body(b'{"event_name":"x","s":"50% \xc3\xbc"}')
    parts = builder.parts(event_json(event), "evt_1", 7)
    document = json.loads(builder.build(event_json(event), "evt_1", 7))
    assert parts.task_id == task_id_for("evt_1")
    assert parts.headers == document["headers"]
    assert parts.body == base64.b64decode(document["body"])
    tags = {parts.properties.pop("delivery_tag"), document["properties"].pop("delivery_tag")}
    assert len(tags) == 2 and parts.properties == document["properties"]

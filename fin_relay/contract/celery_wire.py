"""Celery task messages built by hand, for publishing without Celery's synchronous client.

The ingest (inside an event loop) and the producer's async API must not call Celery's
blocking ``send_task`` (measured: p99 0.5 s inside an ASGI endpoint). With a Redis broker a
Celery message is one JSON document LPUSHed onto the list named after the queue; this module
builds exactly what kombu's Redis transport would put there (Celery message protocol v2), so
the same Lua script can de-duplicate *and* enqueue in one atomic step.

This is the wire contract other languages can follow too (see README, "Wire contract").
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from fin_relay.contract.names import TASK_QUEUES

_ORIGIN = f"fin-relay@{socket.gethostname()}"

#: Header the worker transport adds to a call job's delivery: the conversation sequence number
#: its take gave the job (read as ``task.request.fin_relay_seq``). Not part of what producers
#: send.
SEQ_HEADER = "fin_relay_seq"

#: The Lua half of :func:`read_call` (``celery_wire.lua``): defines ``celery_wire_read`` and
#: ``celery_wire_conversation`` for a Redis script to prepend.
LUA_READER = Path(__file__).with_name("celery_wire.lua").read_text()


def task_message(
    task: str,
    kwargs: dict[str, Any],
    *,
    task_id: str | None = None,
    queue: str | None = None,
    expires_iso: str | None = None,
    eta_iso: str | None = None,
) -> tuple[str, str]:
    """Return ``(task_id, redis_list_payload)`` for ``task`` called with keyword ``kwargs``.

    The payload is what kombu's Redis transport LPUSHes onto the list ``queue`` (default: the
    task's fixed queue). Anonymous exchange + routing key = queue, so a redelivery after the
    visibility timeout goes back to the same queue.
    """
    tid = task_id or str(uuid.uuid4())
    q = queue or TASK_QUEUES[task]
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": tid,
        "shadow": None,
        "eta": eta_iso,
        "expires": expires_iso,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": tid,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": kwargs_repr(kwargs),
        "origin": f"{_ORIGIN}:{os.getpid()}",
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    body = json.dumps(
        [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    payload = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": tid,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": q},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return tid, json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    """``kwargsrepr`` of a task message: only the keys (the repr is shown by Celery's logs and
    tooling and must not carry customer data)."""
    return "{" + ", ".join(f"{k!r}: ..." for k in kwargs) + "}"


def conversation_of(kwargs: Any) -> str | None:
    """The conversation a call job belongs to, for ordering: its ``conversation_id`` keyword
    when that is a non-empty string (the rule ``celery_wire.lua`` applies too)."""
    if not isinstance(kwargs, dict):
        return None
    value = kwargs.get("conversation_id")
    return value if isinstance(value, str) and value else None


def read_call(item: str | bytes) -> tuple[str, str, str | None] | None:
    """``(task, task_id, conversation)`` of a task message as LPUSHed on a Redis broker, or
    ``None`` when it is not one: the Python half of ``celery_wire.lua`` (same rule, compared
    by a test). Protocol 2 (``headers.task``; body base64 when ``body_encoding`` says so, then
    ``[args, kwargs, embed]`` or an object with ``args``/``kwargs``) and protocol 1 (body object
    with ``task``, ``id``, ``kwargs``)."""
    try:
        message = json.loads(item)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(message, dict) or not isinstance(message.get("body"), str):
        return None
    raw: str | bytes = message["body"]
    properties = message.get("properties")
    if isinstance(properties, dict) and properties.get("body_encoding") == "base64":
        try:
            raw = base64.b64decode("".join(str(raw).split()), validate=True)
        except (binascii.Error, ValueError):
            return None
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict | list):
        return None
    headers = message.get("headers")
    kwargs: Any
    if isinstance(headers, dict) and headers.get("task") is not None:
        task, task_id = headers.get("task"), headers.get("id")
        if isinstance(payload, list):
            if len(payload) != 3:
                return None
            kwargs = payload[1]
        elif "args" in payload:
            kwargs = payload.get("kwargs")
        else:
            return None
    else:
        if not isinstance(payload, dict):
            return None
        task, task_id, kwargs = payload.get("task"), payload.get("id"), payload.get("kwargs")
    if not isinstance(task, str) or not isinstance(task_id, str):
        return None
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):  # (Lua cannot tell an empty list from {}: no conversation)
        return None
    return task, task_id, conversation_of(kwargs)

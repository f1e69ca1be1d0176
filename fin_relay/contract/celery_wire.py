"""The Celery task message, built and read in one place (the wire contract).

The ingest (inside an event loop) and the producer's async API must not call Celery's
blocking ``send_task`` (its tail latency inside an ASGI endpoint: docs/producer.md). With a Redis broker a
Celery message is one JSON document LPUSHed onto the list named after the queue; this module
builds exactly what kombu's Redis transport would put there (Celery message protocol v2), so
the same Lua script can de-duplicate *and* enqueue in one atomic step.

Everything about the message's shape is here, once:

* :func:`task_parts`: the headers, properties and body bytes of a task call (what kombu
  publishes to any broker); :func:`task_message`: the Redis list payload made of them;
* :class:`TaskTemplate`: the same payload rendered from bytes, for a hot path (the ingest),
  from a template that :func:`task_parts` itself made;
* :func:`split_message`: which task, id, args and kwargs a decoded message carries (protocol 2,
  a hybrid body, protocol 1), the rule both :func:`read_call` and the worker's off-contract
  judge apply; ``celery_wire.lua`` (:data:`LUA_READER`) is its Lua half.

This is the wire contract other languages can follow too (see README, "Wire contract").
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import operator
import os
import re
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypedDict, Unpack

from fin_relay.contract import redisproto
from fin_relay.contract.names import TASK_QUEUES

_ORIGIN = f"fin-relay@{socket.gethostname()}"

#: The body's serialization, as named by the message (and passed to kombu's ``publish``).
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

#: Header the worker transport adds to a call job's delivery: the conversation sequence number
#: its take gave the job (read as ``task.request.fin_relay_seq``). Not part of what producers
#: send.
SEQ_HEADER = "fin_relay_seq"

#: The Lua half of :func:`read_call` (``redisproto/celery_wire.lua``): defines
#: ``celery_wire_read`` and ``celery_wire_conversation`` for a Redis script to prepend.
LUA_READER = redisproto.source("celery_wire.lua")


class TaskParts(NamedTuple):
    """A task message before the broker transport wraps it: what kombu's ``publish`` takes."""

    task_id: str
    headers: dict[str, Any]
    #: the message properties as kombu's Redis transport stores them (``body_encoding``,
    #: ``delivery_tag`` and ``delivery_info`` included)
    properties: dict[str, Any]
    #: the serialized body ``[args, kwargs, embed]`` (JSON, UTF-8)
    body: bytes


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_body(kwargs: dict[str, Any]) -> bytes:
    """The protocol-2 body of a call with keyword ``kwargs`` only: ``[[], kwargs, embed]``."""
    return _dumps([[], kwargs, _EMBED]).encode()


def _origin() -> str:
    return f"{_ORIGIN}:{os.getpid()}"


def _headers(
    task: str,
    task_id: str,
    kwargsrepr: str,
    origin: str,
    *,
    eta_iso: str | None = None,
    expires_iso: str | None = None,
) -> dict[str, Any]:
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": eta_iso,
        "expires": expires_iso,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": kwargsrepr,
        "origin": origin,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }


def _properties(task_id: str, queue: str, delivery_tag: str) -> dict[str, Any]:
    # Anonymous exchange + routing key = queue, so a redelivery after the visibility timeout
    # goes back to the same queue.
    return {
        "correlation_id": task_id,
        "reply_to": "",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": delivery_tag,
    }


def _envelope(headers: dict[str, Any], properties: dict[str, Any], body_base64: str) -> str:
    """kombu's Redis envelope around an already base64-encoded body (the LPUSHed JSON)."""
    return _dumps(
        {
            "body": body_base64,
            "content-encoding": CONTENT_ENCODING,
            "content-type": CONTENT_TYPE,
            "headers": headers,
            "properties": properties,
        }
    )


class TaskOptions(TypedDict, total=False):
    """The options of a task message (each defaults to ``None``)."""

    #: the task id (a new uuid4 when left out)
    task_id: str | None
    #: the queue (the task's fixed queue when left out)
    queue: str | None
    #: the ``expires`` header (ISO 8601)
    expires_iso: str | None
    #: the ``eta`` header (ISO 8601)
    eta_iso: str | None


def task_parts(task: str, kwargs: dict[str, Any], **options: Unpack[TaskOptions]) -> TaskParts:
    """The parts of the message calling ``task`` with keyword ``kwargs``."""
    tid = options.get("task_id") or str(uuid.uuid4())
    headers = _headers(
        task,
        tid,
        kwargs_repr(kwargs),
        _origin(),
        eta_iso=options.get("eta_iso"),
        expires_iso=options.get("expires_iso"),
    )
    queue = options.get("queue") or TASK_QUEUES[task]
    return TaskParts(tid, headers, _properties(tid, queue, str(uuid.uuid4())), encode_body(kwargs))


def redis_payload(parts: TaskParts) -> str:
    """What kombu's Redis transport LPUSHes for ``parts``: the envelope, body in base64."""
    return _envelope(parts.headers, parts.properties, base64.b64encode(parts.body).decode())


def task_message(
    task: str, kwargs: dict[str, Any], **options: Unpack[TaskOptions]
) -> tuple[str, str]:
    """Return ``(task_id, redis_list_payload)`` for ``task`` called with keyword ``kwargs``
    (:func:`task_parts`, then :func:`redis_payload`).

    The payload is what kombu's Redis transport LPUSHes onto the list ``queue`` (default: the
    task's fixed queue).
    """
    parts = task_parts(task, kwargs, **options)
    return parts.task_id, redis_payload(parts)


_MARK_TID = "00000000-0000-4000-8000-00000000f1d0"
_MARK_BODY = "@@fin-relay-body@@"
_MARK_TAG = "@@fin-relay-tag@@"
#: where the envelope takes the task id, the base64 body and the delivery tag (that order)
_MARKS = (_MARK_TID.encode(), _MARK_BODY.encode(), _MARK_TAG.encode())
_MARKS_RE = re.compile(b"(" + b"|".join(re.escape(m) for m in _MARKS) + b")")
_MARK_KWARGS = re.compile(rb'("@@fin-relay-kwarg-\d+@@")')


def _format(text: bytes, marks: re.Pattern[bytes]) -> tuple[bytes, list[bytes]]:
    """``text`` as a ``bytes % tuple`` format with a ``%b`` in place of each match of
    ``marks`` (a pattern of one group), and the matches in order."""
    parts = marks.split(text)
    pieces = [piece.replace(b"%", b"%%") for piece in parts[0::2]]
    return b"%b".join(pieces), parts[1::2]


class TaskTemplate:
    """:func:`task_message` of one task and one set of keyword names, rendered from bytes.

    For a hot path (the ingest: a third of its budget went into two ``json.dumps`` per event).
    The template is made once by :func:`task_parts` and :func:`encode_body` themselves, with
    markers where the values go, and turned into two ``bytes`` formats (the body, the
    envelope); a message is then the keyword values (given as their JSON text, spliced in
    unparsed) formatted into the body, and the task id, base64 body and a delivery tag
    formatted into the envelope: no JSON encoding, no decode/encode round trip.
    """

    def __init__(self, task: str, names: Sequence[str], *, queue: str | None = None) -> None:
        self.task, self.names = task, tuple(names)
        self._queue = queue or TASK_QUEUES[task]
        marked = {name: f"@@fin-relay-kwarg-{i}@@" for i, name in enumerate(self.names)}
        self._body, _ = _format(encode_body(marked), _MARK_KWARGS)
        self._kwargsrepr = kwargs_repr(marked)
        self._origin = _origin()
        headers = _headers(task, _MARK_TID, self._kwargsrepr, self._origin)
        document = _envelope(headers, _properties(_MARK_TID, self._queue, _MARK_TAG), _MARK_BODY)
        self._envelope, found = _format(document.encode(), _MARKS_RE)
        # (task id, base64 body, delivery tag) -> the values in the order the envelope holds them
        self._pick: Callable[[tuple[bytes, bytes, bytes]], tuple[bytes, ...]]
        self._pick = operator.itemgetter(*(_MARKS.index(mark) for mark in found))
        # kombu treats the delivery tag as an opaque unique string (it keys the unacked hash);
        # a per-template random prefix plus a counter is unique and cheaper than uuid4 each.
        self._tag_prefix = uuid.uuid4().hex.encode() + b"-"
        self._tags = itertools.count(1)

    def body(self, values: tuple[bytes, ...]) -> bytes:
        """The body with ``values`` (the JSON text of each keyword value, in ``names`` order)."""
        return self._body % values

    def render(self, task_id: str, values: tuple[bytes, ...]) -> bytes:
        """The Redis list payload (UTF-8 JSON) of the call with these keyword values.

        ``task_id`` goes in as it is: it must need no JSON escaping (a uuid, say).
        """
        body = binascii.b2a_base64(self._body % values, newline=False)
        tag = self._tag_prefix + b"%d" % next(self._tags)
        return self._envelope % self._pick((task_id.encode(), body, tag))

    def parts(self, task_id: str, values: tuple[bytes, ...]) -> TaskParts:
        """The same message as :class:`TaskParts` (for kombu, which wraps it itself)."""
        headers = _headers(self.task, task_id, self._kwargsrepr, self._origin)
        tag = f"{self._tag_prefix.decode()}{next(self._tags)}"
        return TaskParts(
            task_id, headers, _properties(task_id, self._queue, tag), self.body(values)
        )


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


def split_message(headers: Any, payload: Any) -> tuple[Any, Any, tuple[Any, Any] | None]:
    """``(task, task_id, (args, kwargs))`` of a message with ``headers`` whose body decoded to
    ``payload``; ``(args, kwargs)`` is ``None`` when the body is not a call.

    Protocol 2 names the task in ``headers.task`` and ``headers.id``; its body is
    ``[args, kwargs, embed]`` or a hybrid object with ``args``/``kwargs`` keys. Protocol 1 (no
    ``headers.task``, a body object with ``task``) names them in the body, whose ``args`` may be
    left out, as Celery allows. Nothing here is checked for type: the task, id, args and kwargs
    are as found (a missing ``args``/``kwargs`` key reads as ``[]``/``{}``).
    """
    if not isinstance(headers, dict):
        headers = {}
    task, task_id = headers.get("task"), headers.get("id")
    protocol1 = task is None and isinstance(payload, dict) and "task" in payload
    if protocol1:
        task, task_id = payload.get("task"), payload.get("id")
    elif isinstance(payload, list | tuple) and len(payload) == 3:
        return task, task_id, (payload[0], payload[1])
    if isinstance(payload, dict) and (protocol1 or "args" in payload):
        return task, task_id, (payload.get("args", []), payload.get("kwargs", {}))
    return task, task_id, None


def read_call(item: str | bytes) -> tuple[str, str, str | None] | None:
    """``(task, task_id, conversation)`` of a task message as LPUSHed on a Redis broker, or
    ``None`` when it is not one: the Python half of ``celery_wire.lua`` (same rule, compared
    by a test). The body is base64 when ``body_encoding`` says so, then JSON, then read by
    :func:`split_message`; a null kwargs reads as ``{}``."""
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
    task, task_id, call = split_message(message.get("headers"), payload)
    if call is None or not isinstance(task, str) or not isinstance(task_id, str):
        return None
    kwargs = {} if call[1] is None else call[1]
    if not isinstance(kwargs, dict):  # (Lua cannot tell an empty list from {}: no conversation)
        return None
    return task, task_id, conversation_of(kwargs)

"""Messages on fin-relay's queues that are not valid jobs: dead-lettered, never logged.

Celery drops a message it cannot run and logs it whole at ERROR ("Received unregistered task",
"Received invalid task message", "Can't decode message body": body, headers and delivery
info), which puts customer data in the worker log and in Sentry; a registered task called with
positional arguments raises ``TypeError`` and is acknowledged as failed. Either way the job
vanishes without an outcome. fin-relay's consumer (:class:`Consumer`, Celery's
``worker_consumer`` in ``worker/app.py``, so ``fin-relay worker`` and ``celery -A
fin_relay.worker.app worker`` both use it) looks at every message before Celery does
(:func:`screen`), and a message that is not a valid job is dead-lettered instead:

==========================  =============================================================
reason                      the message
==========================  =============================================================
``unknown_task``            a task name that is not one of fin-relay's (``fin.start`` ...
                            ``fin.event``), Celery's built-in tasks included
``undecodable_message``     a body that cannot be decoded: not JSON, a content type or
                            serializer the worker does not accept (pickle, YAML ...)
``invalid_message``         a decoded body that is not ``[args, kwargs, embed]`` with a
                            JSON object as kwargs, or headers Celery cannot read
``positional_arguments``    a fin-relay task sent with positional arguments (the wire
                            contract is keyword arguments only)
==========================  =============================================================

Each becomes a ``job.dead`` (``event.dead`` for ``fin.event`` or a message from
``fin.events``) entry on ``{ns}:dead`` whose data has the reason, an ``error`` naming the
problem (never a value), the task name, task id and queue; ``{ns}:deadpayload:{task id}``
keeps the decoded kwargs, the positional arguments (``args``) or the undecoded body (``raw``)
for inspection and replay. A message under one of fin-relay's call task names (``fin.start``
...) is also answered ``call.failed`` on ``{ns}:results`` (same reason), so a producer waiting
for it is not left waiting; its job hash is not touched (a valid message of the same id still
runs) and its producer-assigned ``relay.sequence``, if any, is marked done so the
conversation's later calls are not held back. The message is then acknowledged. Nothing of
its body or arguments is logged: the log line names the reason, task name and task id.

A valid job passes unchanged, at the cost of a few dictionary look-ups (the body is decoded
once, and Celery reuses that decode). Its ``argsrepr``/``kwargsrepr`` headers (which Celery
shows in logs and ``celery inspect``, and which Celery's own client fills with a repr of the
arguments) are replaced by the argument names.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from celery.worker.consumer.consumer import Consumer as CeleryConsumer

from fin_relay.contract import redisproto
from fin_relay.contract.celery_wire import SEQ_HEADER, kwargs_repr, split_message
from fin_relay.contract.envelope import Envelope
from fin_relay.contract.jobs import DEAD_EVENT, DEAD_JOB, RELAY_KWARG, dead_letter
from fin_relay.contract.names import (
    CALL_FAILED,
    CALL_TASKS,
    EVENTS_QUEUE,
    TASK_EVENT,
    TASK_OPERATIONS,
    TASK_QUEUES,
)
from fin_relay.contract.publish import add_publish
from fin_relay.observability import DEAD_LETTERS
from fin_relay.worker.runtime import Runtime, get_runtime

log = logging.getLogger("fin_relay.worker.offcontract")

UNKNOWN_TASK = "unknown_task"
UNDECODABLE = "undecodable_message"
INVALID_MESSAGE = "invalid_message"
POSITIONAL = "positional_arguments"

_MAX_NAME = 200  # characters of a task name, id or queue kept (longer ones are cut)
_MAX_RAW_BYTES = 1024 * 1024  # of an undecodable body kept in the dead payload
_MAX_FIELDS = 64  # kwarg names listed in an error
_CALL_TASK_NAMES = frozenset(CALL_TASKS.values())
#: How long the consumer waits before putting a message back when its dead letter could not
#: be written (Redis down): the broker redelivers it, and the wait avoids a busy loop.
PUT_BACK_DELAY_S = 0.5


def _label(value: Any, default: str = "") -> str:
    """A task name, id or queue as stored and logged: text, printable, bounded."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return default if value is None else type(value).__name__
    text = value[:_MAX_NAME]
    return text if text.isprintable() else repr(text)[1:-1][:_MAX_NAME]


@dataclass
class Verdict:
    """Why a message is not a valid job, and what is kept of it."""

    reason: str
    error: str
    task: str
    task_id: str
    queue: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    args: list[Any] | None = None
    raw: dict[str, Any] | None = None
    #: the conversation number the broker's take gave it (``celery_wire.SEQ_HEADER``), or 0
    take_seq: int = 0

    @property
    def kind(self) -> str:
        """``event.dead`` for an event (by name, or by the queue it came from), else
        ``job.dead``."""
        if self.task == TASK_EVENT:
            return DEAD_EVENT
        if self.task not in _CALL_TASK_NAMES and self.queue == EVENTS_QUEUE:
            return DEAD_EVENT
        return DEAD_JOB

    @property
    def conversation_id(self) -> str | None:
        source = self.kwargs.get("event") if self.task == TASK_EVENT else self.kwargs
        cid = source.get("conversation_id") if isinstance(source, dict) else None
        return cid if isinstance(cid, str) and cid else None


def _raw(message: Any) -> dict[str, Any]:
    body = getattr(message, "body", b"")
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    if not isinstance(body, bytes | bytearray | memoryview):
        body = repr(body).encode()
    data = bytes(body)
    return {
        "body_base64": base64.b64encode(data[:_MAX_RAW_BYTES]).decode(),
        "body_bytes": len(data),
        "truncated": len(data) > _MAX_RAW_BYTES,
        "content_type": _label(getattr(message, "content_type", None)),
        "content_encoding": _label(getattr(message, "content_encoding", None)),
    }


def _queue_of(message: Any) -> str:
    info = getattr(message, "delivery_info", None)
    if isinstance(info, dict):
        return _label(info.get("routing_key") or info.get("exchange") or "")
    return ""


def _task_id(value: Any) -> str:
    label = _label(value)
    return label if label else f"offcontract-{uuid.uuid4()}"


_REPRS: dict[tuple[str, ...], str] = {}


def _names_repr(kwargs: dict[str, Any]) -> str:
    names = tuple(kwargs)
    text = _REPRS.get(names)
    if text is None:
        text = kwargs_repr(kwargs)
        if len(_REPRS) < 256:  # a handful of argument sets in practice; bounded regardless
            _REPRS[names] = text
    return text


def screen(message: Any) -> Verdict | None:
    """``None`` when ``message`` is a valid fin-relay job (its repr headers are then reduced to
    the argument names), else the :class:`Verdict` of why not. A fin-relay task name this
    worker has not registered passes on to Celery, whose ``on_unknown_task`` dead-letters it
    (:class:`Consumer`)."""
    headers = getattr(message, "headers", None)
    if type(headers) is dict:  # the fast path: a protocol-2 message of a fin-relay task
        name = headers.get("task")
        if type(name) is str and name in TASK_QUEUES:
            try:
                payload = message.payload  # decoded once: Celery's strategy reuses it
            except Exception:  # ContentDisallowed, DecodeError, ...: judged below
                payload = None
            # celery_wire.split_message's protocol-2 case, inlined (judge() applies it whole)
            if type(payload) is list and len(payload) == 3:
                args, kwargs = payload[0], payload[1]
                if type(args) is list and not args and type(kwargs) is dict:
                    headers["argsrepr"] = "()"
                    headers["kwargsrepr"] = _names_repr(kwargs)
                    return None
    return judge(message)


def judge(message: Any) -> Verdict | None:
    """:func:`screen` without the fast path: every check, in order."""
    verdict = _judge(message)
    headers = getattr(message, "headers", None)
    if verdict is not None and isinstance(headers, dict):
        seq = headers.get(SEQ_HEADER)
        if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0:
            verdict.take_seq = seq
    return verdict


def _judge(message: Any) -> Verdict | None:
    queue = _queue_of(message)
    headers = getattr(message, "headers", None)
    if not isinstance(headers, dict):
        return Verdict(INVALID_MESSAGE, "the message has no headers", "", _task_id(None), queue)
    try:
        payload = message.payload  # decoded once; Celery's strategy reuses the decoded body
    except Exception as exc:  # ContentDisallowed, DecodeError, ...
        return Verdict(
            UNDECODABLE,
            f"the body cannot be decoded ({type(exc).__name__})",
            _label(headers.get("task")),
            _task_id(headers.get("id")),
            queue,
            raw=_raw(message),
        )
    name, task_id, parts = split_message(headers, payload)  # the rule read_call follows too
    label = _label(name)
    if parts is None:
        return Verdict(
            INVALID_MESSAGE,
            "the body is not [args, kwargs, embed]",
            label,
            _task_id(task_id),
            queue,
            raw=_raw(message),
        )
    args, kwargs = parts
    kept = kwargs if isinstance(kwargs, dict) else {}
    kept_args = list(args) if isinstance(args, list | tuple) and args else None
    if not isinstance(name, str) or name not in TASK_QUEUES:
        return Verdict(
            UNKNOWN_TASK,
            "the task name is not one of fin-relay's tasks",
            label,
            _task_id(task_id),
            queue,
            kept,
            kept_args,
        )
    if not isinstance(kwargs, dict) or not isinstance(args, list | tuple):
        return Verdict(
            INVALID_MESSAGE,
            "the arguments are not a list and a JSON object",
            label,
            _task_id(task_id),
            queue,
            kept,
            kept_args,
            raw=None if isinstance(kwargs, dict) else _raw(message),
        )
    if args:
        names = ", ".join(sorted(str(k) for k in kwargs)[:_MAX_FIELDS]) or "none"
        return Verdict(
            POSITIONAL,
            f"sent with {len(args)} positional argument(s); fin-relay tasks take keyword "
            f"arguments only (keyword arguments given: {names})",
            label,
            _task_id(task_id),
            queue,
            kept,
            list(args),
        )
    headers["argsrepr"] = "()"
    headers["kwargsrepr"] = kwargs_repr(kwargs)
    return None


def _relay(kwargs: dict[str, Any]) -> dict[str, Any]:
    relay = kwargs.get(RELAY_KWARG)
    return relay if isinstance(relay, dict) else {}


def _result(verdict: Verdict) -> Envelope:
    """The ``call.failed`` answering a message under a call task name."""
    relay = _relay(verdict.kwargs)
    metadata = relay.get("metadata")
    correlation_id = relay.get("correlation_id")
    return Envelope.now(
        id=f"{verdict.task_id}.failed.{verdict.reason}",
        type=CALL_FAILED,
        conversation_id=verdict.conversation_id,
        data={
            "job_id": verdict.task_id,
            "task": verdict.task,
            "operation": TASK_OPERATIONS.get(verdict.task, ""),
            "attempts": 0,
            "latency_ms": 0.0,
            "elapsed_ms": 0,
            "metadata": metadata if isinstance(metadata, dict) else None,
            "correlation_id": correlation_id if isinstance(correlation_id, str) else None,
            "request": {},
            "reason": verdict.reason,
            "error": {"message": verdict.error},
        },
    )


def dead_letter_message(runtime: Runtime, verdict: Verdict) -> Envelope:
    """Write the dead letter (and, for a call task name, the ``call.failed`` and the sequence
    number's release) in one transaction; return the dead letter's envelope."""
    names, maxlen = runtime.names, runtime.settings.fin_relay_stream_maxlen
    pipe = runtime.redis.pipeline(transaction=True)
    data: dict[str, Any] = {"error": verdict.error, "queue": verdict.queue}
    if verdict.task in _CALL_TASK_NAMES:
        result = _result(verdict)
        add_publish(pipe, names, names.results, result, maxlen=maxlen)
        data["job_id"] = verdict.task_id
        seq = verdict.take_seq or _relay(verdict.kwargs).get("sequence")
        cid = verdict.conversation_id
        if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 and cid is not None:
            runtime.sequencer.add_done(pipe, verdict.task_id, cid, seq)
    envelope = dead_letter(
        pipe,
        names,
        dead_id=verdict.task_id,
        envelope_id=f"{verdict.task_id}.dead.{verdict.reason}",
        kind=verdict.kind,
        task=verdict.task,
        task_id=verdict.task_id,
        kwargs=verdict.kwargs,
        reason=verdict.reason,
        conversation_id=verdict.conversation_id,
        data=data,
        maxlen=maxlen,
        queue=verdict.queue,
        args=verdict.args,
        raw=verdict.raw,
    )
    redisproto.execute(runtime.redis, pipe)
    DEAD_LETTERS.labels("event" if verdict.kind == DEAD_EVENT else "job", verdict.reason).inc()
    return envelope


def broker_item_verdict(queue: str, item: str | bytes) -> Verdict:
    """The verdict on a queue item that is not even a kombu message (not JSON, or not an
    object with ``properties``): the broker transport cannot hand it to Celery at all (kombu,
    and ``worker/transport.py``, raise on it). Its id is derived from its content, so the same
    item always gets the same dead-letter id."""
    data = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else bytes(item)
    digest = hashlib.sha256(data).hexdigest()[:32]
    raw = {
        "body_base64": base64.b64encode(data[:_MAX_RAW_BYTES]).decode(),
        "body_bytes": len(data),
        "truncated": len(data) > _MAX_RAW_BYTES,
        "content_type": "",
        "content_encoding": "",
    }
    return Verdict(
        UNDECODABLE,
        "the queue item is not a broker message (not a JSON object with properties)",
        "",
        f"offcontract-{digest}",
        _label(queue),
        raw=raw,
    )


def dead_letter_broker_item(queue: str, item: str | bytes, runtime: Runtime | None = None) -> bool:
    """Dead-letter a queue item the broker transport cannot decode (see
    :func:`broker_item_verdict`); ``False`` when the dead letter could not be written (the
    item is then lost: it was already taken from the queue). Logs no content."""
    verdict = broker_item_verdict(queue, item)
    try:
        dead_letter_message(runtime if runtime is not None else get_runtime(), verdict)
    except (redis.RedisError, OSError) as exc:
        log.error(
            "a queue item on %s is not a broker message and its dead letter could not be "
            "written (%s): dropped",
            verdict.queue or "-",
            type(exc).__name__,
        )
        return False
    log.warning(
        "queue item on %s dead-lettered as %s: %s: %s",
        verdict.queue or "-",
        verdict.task_id,
        verdict.reason,
        verdict.error,
    )
    return True


def handle(message: Any, verdict: Verdict, connection_errors: Any = ()) -> bool:
    """Dead-letter ``message`` and acknowledge it; ``False`` (and the message put back for
    the broker to redeliver) when the dead letter could not be written."""
    try:
        dead_letter_message(get_runtime(), verdict)
    except (redis.RedisError, OSError) as exc:
        log.error(
            "message task=%s id=%s queue=%s is not a valid job (%s) and its dead letter could "
            "not be written (%s): put back for redelivery",
            verdict.task or "-",
            verdict.task_id,
            verdict.queue or "-",
            verdict.reason,
            type(exc).__name__,
        )
        time.sleep(PUT_BACK_DELAY_S)
        _settle(message, requeue=True, connection_errors=connection_errors)
        return False
    log.warning(
        "message task=%s id=%s queue=%s dead-lettered: %s: %s",
        verdict.task or "-",
        verdict.task_id,
        verdict.queue or "-",
        verdict.reason,
        verdict.error,
    )
    _settle(message, requeue=None, connection_errors=connection_errors)
    return True


def _settle(message: Any, *, requeue: bool | None, connection_errors: Any) -> None:
    """Acknowledge (``requeue=None``) or reject ``message``, logging no body on failure."""
    try:
        if requeue is None:
            message.ack()
        else:
            message.reject(requeue=requeue)
    except Exception as exc:  # connection gone: the broker redelivers it
        log.warning(
            "could not %s message %s: %s",
            "acknowledge" if requeue is None else "put back",
            _label(getattr(message, "delivery_tag", None), "-"),
            type(exc).__name__,
        )


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, screening every message before Celery's strategy sees it.

    Valid jobs go on to Celery unchanged; anything else is dead-lettered (:func:`handle`). The
    handlers Celery calls for messages it cannot run (unknown, unregistered, invalid,
    undecodable) dead-letter too instead of logging the message.
    """

    def call_soon_ack(self, p: Any, *args: Any, **kwargs: Any) -> Any:
        """Ack or reject now, in the calling (pool) thread, when the broker transport allows it
        (``transport.Transport.THREAD_SAFE_ACKS``).

        Celery queues every ack on the event loop (``hub.call_soon``): one synchronous Redis
        round trip per task in the thread that also takes every message, whose every socket
        call then waits for the GIL behind the pool threads. Under load that serial thread
        was the worker's bottleneck (a backlog in Redis while slots are free)."""
        transport = getattr(self.connection, "transport", None)
        if self.hub is None or not getattr(transport, "THREAD_SAFE_ACKS", False):
            return super().call_soon_ack(p, *args, **kwargs)
        call = functools.partial(p, *args, **kwargs)
        try:
            call()
        except Exception as exc:
            log.error("ack/reject failed: %r", exc)
        return call

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        on_task_received = super().create_task_handler(*args, **kwargs)
        errors = self.connection_errors

        def on_message(message: Any) -> Any:
            verdict = screen(message)
            if verdict is not None:
                handle(message, verdict, errors)
                return None
            return on_task_received(message)

        return on_message

    def _verdict(self, message: Any, reason: str, error: str) -> Verdict:
        headers = getattr(message, "headers", None)
        headers = headers if isinstance(headers, dict) else {}
        return Verdict(
            reason,
            error,
            _label(headers.get("task")),
            _task_id(headers.get("id")),
            _queue_of(message),
            raw=_raw(message) if hasattr(message, "body") else None,
        )

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if not hasattr(message, "ack"):  # not even a message object: nothing to settle
            log.error("undecodable broker message dropped (%s)", type(exc).__name__)
            return
        reason = f"the body cannot be decoded ({type(exc).__name__})"
        handle(message, self._verdict(message, UNDECODABLE, reason), self.connection_errors)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        handle(
            message,
            self._verdict(message, INVALID_MESSAGE, "not a task message"),
            self.connection_errors,
        )

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        handle(
            message,
            self._verdict(message, UNKNOWN_TASK, "the task name is not one of fin-relay's tasks"),
            self.connection_errors,
        )

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        handle(
            message,
            self._verdict(message, INVALID_MESSAGE, f"invalid task message ({type(exc).__name__})"),
            self.connection_errors,
        )

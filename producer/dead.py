"""Dead letters: list, show, replay and purge entries of ``{ns}:dead``.

A dead letter is an envelope on ``{ns}:dead`` (``job.dead`` or ``event.dead``, ``data.dead_id``)
plus ``{ns}:deadpayload:{dead_id}``: the original task, task id, queue and keyword arguments
(``contract.jobs.dead_letter``). Replay re-enqueues that exact job with its original ids:

* a call job: its job hash is reset first (``contract.jobs.prepare_replay``: the terminal
  ``outcome`` and the sequencing fields are cleared, ``run`` is bumped so the new result
  envelopes get new ids; ``dead_entry`` is kept). The worker deletes the dead entry (and its
  payload) once the replayed job succeeds; a replay that fails again is dead-lettered again.
* an event (``fin.event``): re-enqueued, and its old dead entry removed now (the worker has
  no success hook for events; if it fails again it is dead-lettered afresh).

A message that was not a valid job (``worker/offcontract.py``: an unknown task name, positional
arguments, an undecodable body) cannot be replayed as it was: its payload keeps what arrived
(``args``, or the undecoded body as ``raw``) for inspection with ``dead show``, and
:func:`replay` refuses it, saying why.

A call job whose ``relay.expires_at`` has passed would only die again at once (the worker
drops an expired job without calling Fin): :func:`replay` refuses it (:class:`ExpiredError`)
unless asked to give it a new expiry, ``refresh_expiry=True`` (a window as long as the one it
was enqueued with: ``expires_at`` minus ``enqueued_at_ms``) or ``expires_in_s`` (from now).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from pydantic import ValidationError

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.fin_api import format_fin_time, parse_fin_time
from fin_relay.contract.jobs import RELAY_KWARG, JobOptions, prepare_replay
from fin_relay.contract.names import CALL_TASKS, TASK_EVENT
from fin_relay.contract.redisproto import text
from fin_relay.producer.enqueue import Producer
from fin_relay.producer.handle import JobHandle
from fin_relay.producer.prepare import build
from fin_relay.producer.transport import redis_errors

_BATCH = 500


class DeadLetterError(LookupError):
    """No such dead letter, or its payload is gone (purged, or expired), or it cannot be
    replayed as it is."""


class ExpiredError(DeadLetterError):
    """The job's ``relay.expires_at`` has passed: replayed as it is, it would die again."""

    def __init__(self, dead_id: str, expires_at: str) -> None:
        super().__init__(
            f"dead letter {dead_id!r} expired at {expires_at} (relay.expires_at): replayed as "
            "it is, the worker would drop it again at once; give it a new expiry with "
            "--refresh-expiry (a window as long as the original one) or --expires-in-s S"
        )
        self.dead_id = dead_id
        self.expires_at = expires_at


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the dead stream."""

    entry_id: str
    envelope: Envelope

    @property
    def dead_id(self) -> str:
        return str(self.envelope.data.get("dead_id") or self.entry_id)


def iter_dead(client: redis.Redis, stream: str) -> Iterator[DeadLetter]:
    """Every readable entry of the dead stream, oldest first (read in batches)."""
    start = "-"
    while True:
        with redis_errors():
            entries: Any = client.xrange(stream, min=start, count=_BATCH)
        for entry_id, fields in entries:
            try:
                yield DeadLetter(text(entry_id), Envelope.from_stream_fields(fields))
            except ValueError:
                continue
        if len(entries) < _BATCH:
            return
        start = "(" + text(entries[-1][0])


def find(client: redis.Redis, stream: str, ident: str) -> list[DeadLetter]:
    """Entries whose dead id (job/event id) or stream entry id is ``ident``."""
    return [d for d in iter_dead(client, stream) if ident in (d.dead_id, d.entry_id)]


def payload(client: redis.Redis, producer: Producer, dead_id: str) -> dict[str, Any]:
    """The original job: ``{"task", "task_id", "queue", "kwargs"}``."""
    with redis_errors():
        raw = client.get(producer.names.dead_payload(dead_id))
    if raw is None:
        raise DeadLetterError(f"no payload for dead letter {dead_id!r} (purged or expired)")
    value = json.loads(raw)
    if not isinstance(value, dict) or not isinstance(value.get("kwargs"), dict):
        raise DeadLetterError(f"unreadable payload for dead letter {dead_id!r}")
    return value


#: Dead letters whose replay sends the message with a fresh time: whether Fin got the first
#: attempt is unknown and its 5-minute de-duplication window has passed, so the replay is a new
#: message on purpose (the operator's decision), not a retry under the old time.
FRESH_TIMESTAMP_REASONS = frozenset({"outcome_unknown"})


def _without_message_time(kwargs: dict[str, Any]) -> dict[str, Any]:
    message = kwargs.get("message")
    if not isinstance(message, dict):
        return kwargs
    untimed = {k: v for k, v in message.items() if k not in ("timestamp", "timestamp_ms")}
    return {**kwargs, "message": untimed}


def refreshed_expiry(
    dead_id: str,
    kwargs: dict[str, Any],
    *,
    refresh_expiry: bool = False,
    expires_in_s: float | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``kwargs`` with the expiry a replay should carry.

    * ``expires_in_s``: ``relay.expires_at`` = now + that many seconds (any call job);
    * ``refresh_expiry``: a job that had an ``expires_at`` gets a window as long as the one it
      was enqueued with (``expires_at`` - ``relay.enqueued_at_ms``), from now;
    * neither: ``kwargs`` unchanged, but a job whose ``expires_at`` has passed raises
      :class:`ExpiredError`.
    """
    moment = now if now is not None else datetime.now(UTC)
    relay = kwargs.get(RELAY_KWARG)
    relay = dict(relay) if isinstance(relay, dict) else {}
    if expires_in_s is not None:
        if expires_in_s <= 0:
            raise ValueError("--expires-in-s must be > 0")
        new_expiry = moment + timedelta(seconds=expires_in_s)
        return {**kwargs, RELAY_KWARG: {**relay, "expires_at": format_fin_time(new_expiry)}}
    try:
        options = JobOptions.model_validate(relay)
    except ValidationError:  # the worker dead-letters such a job as invalid: nothing to check
        return kwargs
    if options.expires_at is None:
        return kwargs
    if not refresh_expiry:
        if options.expired(moment):
            raise ExpiredError(dead_id, options.expires_at)
        return kwargs
    expires = parse_fin_time(options.expires_at)
    if options.enqueued_at_ms is None:
        raise DeadLetterError(
            f"dead letter {dead_id!r} does not record when it was enqueued (relay.enqueued_at_ms),"
            " so its original expiry window is unknown: give one with --expires-in-s S"
        )
    window = expires - datetime.fromtimestamp(options.enqueued_at_ms / 1000, UTC)
    if window <= timedelta(0):
        raise DeadLetterError(
            f"dead letter {dead_id!r} expired before it was enqueued: give a new expiry with "
            "--expires-in-s S"
        )
    new_expiry = moment + window
    return {**kwargs, RELAY_KWARG: {**relay, "expires_at": format_fin_time(new_expiry)}}


def replay(
    producer: Producer,
    dead_id: str,
    *,
    refresh_expiry: bool = False,
    expires_in_s: float | None = None,
) -> JobHandle:
    """Re-enqueue the dead job/event ``dead_id`` with its original task id (a job whose
    outcome is unknown, :data:`FRESH_TIMESTAMP_REASONS`, with a fresh message time).

    A call job whose ``relay.expires_at`` has passed is refused (:class:`ExpiredError`) unless
    ``refresh_expiry`` or ``expires_in_s`` gives it a new one (:func:`refreshed_expiry`)."""
    client = producer.redis_client
    original = payload(client, producer, dead_id)
    task, task_id = str(original["task"]), str(original["task_id"])
    if task not in (*CALL_TASKS.values(), TASK_EVENT):
        raise DeadLetterError(f"dead letter {dead_id!r} has an unknown task {task!r}")
    if original.get("args"):
        raise DeadLetterError(
            f"dead letter {dead_id!r} was sent with positional arguments: fin-relay tasks take "
            "keyword arguments only; re-enqueue it with keyword arguments"
        )
    if original.get("raw") is not None:
        raise DeadLetterError(
            f"dead letter {dead_id!r} has a body that could not be decoded: nothing to replay"
        )
    kwargs = original["kwargs"]
    if task in CALL_TASKS.values():
        kwargs = refreshed_expiry(
            dead_id, kwargs, refresh_expiry=refresh_expiry, expires_in_s=expires_in_s
        )
    fresh = task in CALL_TASKS.values() and any(
        d.envelope.data.get("reason") in FRESH_TIMESTAMP_REASONS
        for d in find(client, producer.names.dead, dead_id)
    )
    if fresh:
        kwargs = _without_message_time(kwargs)
    job = build(
        task,
        kwargs,
        job_id=task_id,
        caller_chose_id=False,
        queue=original.get("queue") or None,
    )
    if task in CALL_TASKS.values():
        with redis_errors():
            pipe = client.pipeline(transaction=True)
            prepare_replay(pipe, producer.names, task_id)
            if fresh:  # the worker stamps a new message time before the first attempt
                pipe.hdel(producer.names.job(task_id), "ts")
            pipe.execute()
    handle = producer.publish(job, idempotent=False)
    if task == TASK_EVENT:
        remove(client, producer, find(client, producer.names.dead, dead_id), keep_payload=True)
    return handle


def remove(
    client: redis.Redis, producer: Producer, letters: list[DeadLetter], *, keep_payload: bool
) -> int:
    """XDEL ``letters`` (and their payloads unless ``keep_payload``); return how many."""
    if not letters:
        return 0
    with redis_errors():
        pipe = client.pipeline(transaction=True)
        pipe.xdel(producer.names.dead, *[d.entry_id for d in letters])
        if not keep_payload:
            for dead_id in {d.dead_id for d in letters}:
                pipe.delete(producer.names.dead_payload(dead_id))
        pipe.execute()
    return len(letters)


def purge_all(client: redis.Redis, producer: Producer) -> int:
    """Remove every dead letter and payload (consumer groups on the stream are kept)."""
    letters = list(iter_dead(client, producer.names.dead))
    removed = remove(client, producer, letters, keep_payload=False)
    with redis_errors():
        client.xtrim(producer.names.dead, maxlen=0)
    return removed

"""The handle an enqueue returns: the job id, and a way to wait for the job's outcome.

There is no Celery result backend. The worker publishes every call outcome on ``{ns}:results``
(``call.succeeded``, ``call.failed``, ``call.skipped``) with ``data.job_id``; the handle reads
that stream from the position captured atomically at enqueue time (so an outcome published
before ``wait`` was called is found too) and returns the first envelope for its job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
import redis.asyncio

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.names import CALL_FAILED, CALL_SKIPPED, CALL_SUCCEEDED, Names
from fin_relay.contract.redisproto import text
from fin_relay.producer.transport import redis_errors

OUTCOME_TYPES = frozenset({CALL_SUCCEEDED, CALL_FAILED, CALL_SKIPPED})
_BLOCK_CHUNK_MS = 1000
_BATCH = 500


class ResultSource(Protocol):
    """What a handle needs from its producer: names and reading clients."""

    @property
    def names(self) -> Names: ...

    def blocking_reader(self) -> redis.Redis: ...

    def async_blocking_reader(self) -> redis.asyncio.Redis: ...


def match_outcome(
    entries: Iterable[tuple[Any, dict[Any, Any]]], job_id: str, conversation_id: str | None
) -> tuple[str | None, Envelope | None]:
    """Scan XREAD entries: ``(last entry id seen, the job's outcome envelope or None)``."""
    last: str | None = None
    for entry_id, fields in entries:
        last = text(entry_id)
        kind = text(fields.get(b"type", fields.get("type", "")))
        if kind not in OUTCOME_TYPES:
            continue
        conv = text(fields.get(b"conversation_id", fields.get("conversation_id", "")))
        if conversation_id and conv and conv != conversation_id:
            continue  # cheap filter before parsing JSON
        try:
            envelope = Envelope.from_stream_fields(fields)
        except ValueError:
            continue
        if envelope.data.get("job_id") == job_id:
            return last, envelope
    return last, None


def _entries(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    # XREAD reply: [[stream, [(id, fields), ...]]] (RESP2) or {stream: [[...]]} (RESP3).
    if not reply:
        return []
    if isinstance(reply, dict):
        return [e for batch in reply.values() for e in batch[0]]
    return [e for _stream, batch in reply for e in batch]


@dataclass
class JobHandle:
    """An enqueued job. ``created`` is False when a caller-chosen id was enqueued before."""

    id: str
    task: str
    conversation_id: str | None
    created: bool
    results_from: str
    _source: ResultSource = field(repr=False)

    def wait(self, timeout_s: float = 60.0) -> Envelope:
        """Block until the job's outcome envelope appears; raise ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        client = self._source.blocking_reader()
        stream = self._source.names.results
        position = self.results_from
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise TimeoutError(f"no outcome for job {self.id} within {timeout_s:g} s")
            block_ms = max(1, min(remaining_ms, _BLOCK_CHUNK_MS))
            with redis_errors():
                reply = client.xread({stream: position}, count=_BATCH, block=block_ms)
            last, envelope = match_outcome(_entries(reply), self.id, self.conversation_id)
            if envelope is not None:
                return envelope
            position = last or position

    async def wait_async(self, timeout_s: float = 60.0) -> Envelope:
        """:meth:`wait` for an event loop (``redis.asyncio``; the loop keeps running)."""
        loop_deadline = time.monotonic() + timeout_s
        client = self._source.async_blocking_reader()
        stream = self._source.names.results
        position = self.results_from
        while True:
            remaining_ms = int((loop_deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise TimeoutError(f"no outcome for job {self.id} within {timeout_s:g} s")
            block_ms = max(1, min(remaining_ms, _BLOCK_CHUNK_MS))
            with redis_errors():
                reply = await client.xread({stream: position}, count=_BATCH, block=block_ms)
            last, envelope = match_outcome(_entries(reply), self.id, self.conversation_id)
            if envelope is not None:
                return envelope
            position = last or position

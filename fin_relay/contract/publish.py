"""Publishing envelopes: stream + channel, and the conversation's channel, in one round trip.

Used by the worker (call outcomes, Fin events) and by dead-letter replay. Streams are capped
with ``MAXLEN ~``; pub/sub is the lossy live tail.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fin_relay.contract import redisproto
from fin_relay.contract.envelope import Envelope
from fin_relay.contract.names import Names


def add_publish(
    pipe: Any,
    names: Names,
    stream: str,
    envelope: Envelope,
    *,
    maxlen: int,
    record_id: tuple[str, str] | None = None,
) -> None:
    """Queue the commands publishing ``envelope`` on ``stream`` onto a redis-py pipeline.

    XADD ``stream`` (capped), PUBLISH ``stream``, and PUBLISH the conversation's channel when the
    envelope has a conversation id. Works with sync and asyncio pipelines alike. With
    ``record_id=(hash key, field)`` the new entry's id is also written to that hash field by
    the same command (``xadd_recording_id.lua``), so no reader ever sees the entry without the
    record; sent as ``EVAL`` (it is rare, and a ``NOSCRIPT`` re-run would land after the
    ``EXEC`` of the transaction it is part of).
    """
    if record_id is None:
        pipe.xadd(stream, envelope.stream_fields(), maxlen=maxlen, approximate=True)
    else:
        flat = [part for item in envelope.stream_fields().items() for part in item]
        keys, args = [stream, record_id[0]], [maxlen, record_id[1], *flat]
        redisproto.XADD_RECORDING_ID.queue_source(pipe, keys, args)
    text = envelope.to_json()
    pipe.publish(stream, text)
    if envelope.conversation_id:
        pipe.publish(names.conversation_channel(envelope.conversation_id), text)


def add_publish_once(
    pipe: Any,
    names: Names,
    stream: str,
    envelope: Envelope,
    *,
    maxlen: int,
    marker: str,
    marker_value: str,
    marker_ttl_s: int,
) -> int:
    """Queue what :func:`add_publish` queues, as one command (``publish_once.lua``) that
    publishes nothing when the key ``marker`` exists and otherwise sets it (``marker_value``,
    ``marker_ttl_s``): a redelivered event publishes once, without a round trip of its own to
    check first. Returns the index of that command in the pipeline (its reply: 1 published,
    0 already published)."""
    channel = (
        names.conversation_channel(envelope.conversation_id) if envelope.conversation_id else ""
    )
    flat = [part for item in envelope.stream_fields().items() for part in item]
    at = len(pipe.command_stack)
    redisproto.PUBLISH_ONCE.queue(
        pipe,
        [marker, stream, channel],
        [maxlen, marker_value, marker_ttl_s, envelope.to_json(), *flat],
    )
    return at


def publish(
    client: Any, names: Names, items: Iterable[tuple[str, Envelope]], *, maxlen: int
) -> None:
    """Publish ``(stream, envelope)`` pairs in one pipelined round trip (sync client)."""
    pipe = client.pipeline(transaction=False)
    for stream, envelope in items:
        add_publish(pipe, names, stream, envelope, maxlen=maxlen)
    pipe.execute()

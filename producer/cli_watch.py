"""``fin-relay watch``: a live, readable tail of events, results and dead letters.

Reads the streams (XREAD BLOCK), so nothing published while it runs is missed (unlike
pub/sub); ``--from-start`` replays what the streams still hold. ``--json`` prints one envelope
per line for machines. Stops on Ctrl-C or SIGTERM, or after ``--count`` entries or
``--timeout-s`` seconds. A closed standard output (``fin-relay watch --json | head -3``) ends
it quietly (exit 141, ``fin_relay.clio``); Redis unavailable: exit 3.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import redis

from fin_relay.clio import EXIT_OK, EXIT_UNAVAILABLE, pipe_safe
from fin_relay.contract.envelope import Envelope, stream_conversation_id
from fin_relay.contract.errors import BrokerUnavailableError
from fin_relay.contract.names import Names
from fin_relay.contract.redisproto import text
from fin_relay.contract.settings import ProducerSettings, load
from fin_relay.producer.render import line
from fin_relay.producer.transport import redis_errors, sync_client

STREAMS = ("events", "results", "dead")
_BLOCK_MS = 500


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stream", choices=[*STREAMS, "all"], default="all")
    parser.add_argument("--conversation", metavar="ID", help="only this conversation")
    parser.add_argument("--from-start", action="store_true", help="from the oldest kept entry")
    parser.add_argument("--json", action="store_true", help="one envelope (JSON) per line")
    parser.add_argument("--count", type=int, help="stop after N entries")
    parser.add_argument("--timeout-s", type=float, help="stop after this many seconds")


def start_positions(client: redis.Redis, streams: list[str], from_start: bool) -> dict[Any, Any]:
    """Concrete ids to read after (``$`` resolved once, so no entry is missed between reads)."""
    positions: dict[Any, Any] = {}
    for stream in streams:
        last: Any = [] if from_start else client.xrevrange(stream, count=1)
        positions[stream] = text(last[0][0]) if last else "0-0"
    return positions


class _StdoutClosed(Exception):
    """Standard output's reader went away: not an ``OSError``, so ``redis_errors`` (which
    turns socket errors into "Redis unavailable") lets it through."""


class _Stop:
    """Set by SIGTERM/SIGINT: the loop ends after the current (short) block."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def tail(
    client: redis.Redis,
    streams: list[str],
    emit: Callable[[Envelope], None],
    *,
    conversation: str | None,
    from_start: bool,
    count: int | None,
    deadline: float | None,
    stop: _Stop,
) -> int:
    """Read ``streams`` and ``emit`` matching envelopes; return how many were emitted."""
    positions = start_positions(client, streams, from_start)
    emitted = 0
    while not stop.requested and (count is None or emitted < count):
        if deadline is not None and time.monotonic() >= deadline:
            break
        reply: Any = client.xread(positions, count=100, block=_BLOCK_MS)
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                positions[text(stream)] = text(entry_id)
                # the entry's field, checked before parsing JSON: absent when the envelope's
                # conversation_id is null, so such an entry matches no --conversation
                if conversation is not None and stream_conversation_id(fields) != conversation:
                    continue
                try:
                    envelope = Envelope.from_stream_fields(fields)
                except ValueError:
                    continue
                emit(envelope)
                emitted += 1
                if count is not None and emitted >= count:
                    return emitted
    return emitted


@pipe_safe
def run(args: argparse.Namespace) -> int:
    settings = load(ProducerSettings)
    names = Names(settings.fin_relay_namespace)
    chosen = STREAMS if args.stream == "all" else (args.stream,)
    streams = [str(getattr(names, s)) for s in chosen]
    client = sync_client(
        settings.redis_url, settings.fin_relay_enqueue_timeout_s, blocking_reads=True
    )
    stop = _Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def emit(envelope: Envelope) -> None:
        try:
            print(envelope.to_json() if args.json else line(envelope), flush=True)
        except BrokenPipeError:
            raise _StdoutClosed from None

    deadline = time.monotonic() + args.timeout_s if args.timeout_s is not None else None
    try:
        with redis_errors():
            tail(
                client,
                streams,
                emit,
                conversation=args.conversation,
                from_start=args.from_start,
                count=args.count,
                deadline=deadline,
                stop=stop,
            )
    except BrokerUnavailableError as exc:
        print(f"fin-relay watch: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except _StdoutClosed:  # `fin-relay watch | head`: pipe_safe ends it quietly
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        client.close()
    return EXIT_OK

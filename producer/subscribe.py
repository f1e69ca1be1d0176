"""The live tail: pub/sub on ``{ns}:events``, ``{ns}:results``, ``{ns}:dead`` or one conversation.

Pub/sub is lossy (a subscriber that is not connected misses messages); read the streams with
:class:`fin_relay.producer.consumer.StreamConsumer` for anything that must not be missed.

```python
with Subscription(client, names, conversation_id="ext-123") as live:
    for envelope in live.envelopes(timeout_s=60):
        print(envelope.type, envelope.data)
```
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Self

import redis

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.names import Names
from fin_relay.contract.redisproto import text
from fin_relay.producer.consumer import resolve_stream

log = logging.getLogger("fin_relay.subscribe")


class Subscription:
    """Subscribed on entering the ``with`` block; :meth:`get` / :meth:`envelopes` read it.

    ``conversation_id`` subscribes to that conversation's channel (its events and results);
    otherwise ``streams`` (``events``, ``results``, ``dead`` or full names) are subscribed.
    """

    def __init__(
        self,
        client: redis.Redis,
        names: Names,
        *,
        streams: Sequence[str] = ("events", "results"),
        conversation_id: str | None = None,
    ) -> None:
        if conversation_id is not None:
            self.channels = [names.conversation_channel(conversation_id)]
        else:
            self.channels = [resolve_stream(names, s) for s in streams]
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]

    def __enter__(self) -> Self:
        self._pubsub.subscribe(*self.channels)
        # wait for the server's confirmations, so nothing published after this point is missed
        confirmed = 0
        deadline = time.monotonic() + 5.0
        while confirmed < len(self.channels) and time.monotonic() < deadline:
            message = self._pubsub.parse_response(block=False, timeout=0.1)
            if message is not None and text(message[0]) == "subscribe":
                confirmed += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pubsub.close()

    def get(self, timeout_s: float = 1.0) -> Envelope | None:
        """The next envelope, or None after ``timeout_s`` without one."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            message = self._pubsub.get_message(timeout=remaining)
            if message is None or message.get("type") != "message":
                continue
            try:
                return Envelope.model_validate(json.loads(message["data"]))
            except ValueError:
                log.warning("unreadable message on %s skipped", text(message["channel"]))

    def envelopes(self, timeout_s: float | None = None) -> Iterator[Envelope]:
        """Yield envelopes as they arrive, for ``timeout_s`` in total (None: forever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            envelope = self.get(max(wait, 0.0))
            if envelope is not None:
                yield envelope


def subscribe(
    client: redis.Redis,
    names: Names,
    *,
    streams: Sequence[str] = ("events", "results"),
    conversation_id: str | None = None,
    timeout_s: float | None = None,
) -> Iterator[Envelope]:
    """Generator form of :class:`Subscription` (unsubscribes when closed or exhausted)."""
    with Subscription(client, names, streams=streams, conversation_id=conversation_id) as sub:
        yield from sub.envelopes(timeout_s)

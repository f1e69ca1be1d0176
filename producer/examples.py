"""A runnable example consumer: ``python -m fin_relay.producer.examples [GROUP]``.

Reads ``{ns}:results`` and ``{ns}:events`` durably with a consumer group (created if missing),
prints every envelope once, takes over entries left by a crashed member after 60 s, and stops
cleanly on Ctrl-C or SIGTERM. Copy it as the starting point of your own consumer: put your
work in ``handle`` (raise to leave the entry pending, to be retried).
"""

from __future__ import annotations

import signal
import socket
import sys
import threading

import redis

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.names import Names
from fin_relay.contract.settings import ProducerSettings, load
from fin_relay.producer.consumer import StreamConsumer


def handle(envelope: Envelope) -> None:
    """Your business logic. Called once per envelope id (per consumer group)."""
    if envelope.type == "call.succeeded":
        print(f"job {envelope.data['job_id']} ok: Fin says {envelope.data.get('response')}")
    elif envelope.type == "call.failed":
        print(f"job {envelope.data['job_id']} failed: {envelope.data.get('reason')}")
    elif envelope.type == "fin_replied":
        print(f"Fin replied in {envelope.conversation_id}: {envelope.data['message']['body']}")
    else:
        print(envelope.type, envelope.conversation_id, envelope.data)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    group = args[0] if args else "example"
    settings = load(ProducerSettings)  # REDIS_URL, FIN_RELAY_NAMESPACE
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    consumer = StreamConsumer(
        client,
        Names(settings.fin_relay_namespace),
        group=group,
        consumer=f"{socket.gethostname()}-{group}",  # stable per host: restarts resume pending
        streams=("results", "events"),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    handled = consumer.run(handle, stop=stop, reclaim_idle_ms=60_000)
    print(f"stopped after {handled} envelopes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

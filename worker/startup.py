"""What a worker checks and says when it starts, for both entry points (``fin-relay worker``
and ``celery -A fin_relay.worker.app worker``).

* :func:`start_problems`: why a worker must not start with these settings and this Celery
  configuration: the delivery-guarantee rules (``fin_relay.contract.guarantees``) and, on a
  broker that uses fin-relay's Redis transport, the installed kombu against the versions that
  transport was verified with (:func:`kombu_problem`). ``fin-relay worker`` refuses before it
  starts Celery, the app again at ``celeryd_init``; ``fin-relay doctor`` reports the same.
* :func:`announce`: the start-up line once the worker consumes: node name, queues, broker
  (password masked), pool, concurrency and pid (connected to ``worker_ready`` by the app).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from fin_relay.contract import guarantees
from fin_relay.contract.names import CALLS_QUEUE, EVENTS_QUEUE
from fin_relay.contract.settings import CommonSettings, WorkerSettings
from fin_relay.worker import transport

#: Broker URL schemes whose kombu transport fin-relay's replaces (``transport.Connection``):
#: they need a kombu version the overrides were verified with. Sentinel and RabbitMQ keep
#: kombu's own transports, and a producer never loads a worker transport.
TRANSPORT_SCHEMES = ("redis", "rediss", "redis+socket")


def uses_fin_relay_transport(settings: CommonSettings) -> bool:
    """Does the worker's broker connection use ``fin_relay.worker.transport``?"""
    return urlsplit(settings.broker_url).scheme.lower() in TRANSPORT_SCHEMES


def kombu_range() -> str:
    """The verified kombu versions as a requirement specifier (``>=5.7,<5.8``)."""
    low = min(transport.KOMBU_VERIFIED)
    high = max(transport.KOMBU_VERIFIED)
    return f">={low[0]}.{low[1]},<{high[0]}.{high[1] + 1}"


def kombu_problem(settings: CommonSettings) -> str | None:
    """Why the installed kombu cannot run this worker's broker, or None.

    fin-relay's Redis transport overrides private kombu methods and calls kombu's own
    (``_flush_brpop_reauth`` first shipped in kombu 5.7.0: on 5.5 or 5.6 every take raises),
    so on a broker that uses it the worker runs only on a verified kombu.
    """
    if not uses_fin_relay_transport(settings) or transport.kombu_verified():
        return None
    wanted = kombu_range()
    return (
        f"kombu {transport.kombu_version()} is installed, but fin-relay's Redis broker "
        f"transport is verified with kombu {wanted} only: install it "
        f"(pip install 'kombu{wanted}') or use a RabbitMQ broker (FIN_BROKER_URL=amqp://...)"
    )


def start_problems(settings: WorkerSettings, conf: Mapping[str, Any]) -> list[str]:
    """Every reason a worker with ``settings`` and Celery configuration ``conf`` must not
    start (empty: it may)."""
    found = guarantees.problems(settings, conf)
    kombu = kombu_problem(settings)
    if kombu is not None:
        found.append(kombu)
    return found


def startup_fields(consumer: Any) -> dict[str, Any]:
    """What the start-up line says, from Celery's consumer (the ``worker_ready`` sender)."""
    try:
        queues = [str(q.name) for q in consumer.task_consumer.queues]
    except AttributeError:
        queues = [CALLS_QUEUE, EVENTS_QUEUE]
    app = getattr(consumer, "app", None)
    broker = str(getattr(getattr(app, "conf", None), "broker_url", None) or "?")
    pool = getattr(consumer, "pool", None)
    pool_name = type(pool).__module__.rsplit(".", 1)[-1] if pool is not None else "?"
    from fin_relay.observability import mask_url

    return {
        "hostname": str(getattr(consumer, "hostname", None) or f"pid{os.getpid()}"),
        "queues": queues,
        "broker": mask_url(broker),
        "pool": {"thread": "threads"}.get(pool_name, pool_name),
        "concurrency": getattr(pool, "limit", None),
        "pid": os.getpid(),
    }


def announce(sender: Any = None, **_: Any) -> None:
    """The worker's start-up line (``worker_ready``): what it consumes, from where."""
    fields = startup_fields(sender)
    logging.getLogger("fin_relay.worker").info(
        "fin-relay worker %s consuming %s from %s (pool %s, concurrency %s, pid %d)",
        fields["hostname"],
        ",".join(fields["queues"]),
        fields["broker"],
        fields["pool"],
        fields["concurrency"],
        fields["pid"],
        extra=fields,
    )

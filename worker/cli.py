"""``fin-relay worker``: start a Celery worker consuming ``fin.calls`` and ``fin.events``.

Defaults were chosen by measurement (docs/worker.md): the ``threads`` pool at concurrency 64,
with one small httpx client per thread.

Once it consumes, a worker logs one start-up line (:func:`announce`): its node name, the queues
it consumes, the broker (password masked), pool, concurrency and pid. Connected to Celery's
``worker_ready`` when this module is imported: by ``fin-relay worker``, and by the app's
start-up check for ``celery -A fin_relay.worker.app worker``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from celery import signals

from fin_relay.contract.names import CALLS_QUEUE, EVENTS_QUEUE
from fin_relay.contract.settings import WorkerSettings, load
from fin_relay.worker.retries import longest_countdown_s

DEFAULT_POOL = "threads"
DEFAULT_CONCURRENCY = 64
POOLS = ("threads", "prefork", "solo", "gevent")


def guarantee_problems(settings: WorkerSettings, conf: Any) -> list[str]:
    """Every configuration that would break fin-relay's delivery guarantees (empty = fine)."""
    problems = []
    if not conf.get("task_acks_late"):
        problems.append("task_acks_late must be on (a killed worker would lose its job)")
    if not conf.get("task_reject_on_worker_lost"):
        problems.append("task_reject_on_worker_lost must be on (jobs of a lost worker requeue)")
    if conf.get("worker_prefetch_multiplier") != 1:
        problems.append("worker_prefetch_multiplier must be 1 (no job waits behind a busy slot)")
    if conf.get("result_backend"):
        problems.append("no result backend: outcomes are published to the results stream")
    needed = longest_countdown_s(settings) + settings.fin_relay_task_time_limit_s
    if settings.fin_relay_visibility_timeout_s <= needed:
        problems.append(
            f"FIN_RELAY_VISIBILITY_TIMEOUT_S ({settings.fin_relay_visibility_timeout_s:g}) must "
            f"exceed the longest countdown plus FIN_RELAY_TASK_TIME_LIMIT_S ({needed:g} s): "
            "Redis would redeliver waiting jobs to a second worker"
        )
    limit = settings.fin_relay_connect_timeout_s + settings.fin_relay_read_timeout_s
    if settings.fin_relay_task_time_limit_s <= limit:
        problems.append(
            f"FIN_RELAY_TASK_TIME_LIMIT_S ({settings.fin_relay_task_time_limit_s:g}) must exceed "
            f"the connect + read timeouts ({limit:g} s)"
        )
    return problems


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"worker slots (default {DEFAULT_CONCURRENCY}: measured, see docs/worker.md)",
    )
    parser.add_argument(
        "--pool",
        "-P",
        choices=POOLS,
        default=DEFAULT_POOL,
        help=f"Celery pool (default {DEFAULT_POOL})",
    )
    parser.add_argument(
        "--queues",
        "-Q",
        default=f"{CALLS_QUEUE},{EVENTS_QUEUE}",
        help="comma-separated queues to consume (default: both)",
    )
    parser.add_argument("--loglevel", "-l", default="info", help="log level (default info)")
    parser.add_argument("--hostname", "-n", default=None, help="Celery node name")


def run(args: argparse.Namespace) -> int:
    settings = load(WorkerSettings)  # ConfigurationError -> one line, exit 2 (fin_relay.cli)
    from fin_relay.worker.app import app

    problems = guarantee_problems(settings, app.conf)
    if problems:
        print(f"fin-relay worker: refusing to start: {problems[0]}", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("fin-relay worker: --concurrency must be >= 1", file=sys.stderr)
        return 2
    argv = [
        "worker",
        "-P",
        args.pool,
        "-c",
        str(args.concurrency),
        "-Q",
        args.queues,
        "-l",
        args.loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    if args.hostname:
        argv += ["-n", args.hostname]
    from fin_relay.observability import configure_logging, json_logs

    # Structured from the first line: Celery's own set-up (after_setup_logger) comes later, and
    # its privilege check warns before it. With JSON lines (not a terminal) Celery's text
    # banner is left out: the start-up line (announce) says what it said that matters.
    configure_logging(args.loglevel)
    if json_logs():
        argv.insert(0, "--quiet")  # celery's global option: before the sub-command
    app.worker_main(argv)
    return 0


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


signals.worker_ready.connect(announce, weak=False, dispatch_uid="fin_relay.worker.cli.announce")

"""``fin-relay worker``: start a Celery worker consuming ``fin.calls`` and ``fin.events``.

Defaults were chosen by measurement (docs/worker.md): the ``threads`` pool at concurrency 64,
with one small httpx client per thread.
"""

from __future__ import annotations

import argparse
from typing import Any

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
        print(f"fin-relay worker: refusing to start: {problems[0]}")
        return 2
    if args.concurrency < 1:
        print("fin-relay worker: --concurrency must be >= 1")
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
    app.worker_main(argv)
    return 0

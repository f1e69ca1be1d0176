"""``fin-relay worker``: start a Celery worker consuming ``fin.calls`` and ``fin.events``.

Defaults were chosen by measurement (docs/worker.md): the ``threads`` pool at concurrency 64,
with one small httpx client per thread.

Before it starts Celery it refuses (exit 2, one line) a configuration that would break the
delivery guarantees, or a kombu its Redis transport was not verified with
(``fin_relay.worker.startup.start_problems``; the app checks the same again at
``celeryd_init``, for ``celery -A fin_relay.worker.app worker``). Once it consumes, it logs one
start-up line (``fin_relay.worker.startup.announce``).
"""

from __future__ import annotations

import argparse
import sys

from fin_relay.contract.names import CALLS_QUEUE, EVENTS_QUEUE
from fin_relay.contract.settings import WorkerSettings, load

DEFAULT_POOL = "threads"
DEFAULT_CONCURRENCY = 64
POOLS = ("threads", "prefork", "solo", "gevent")


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
    from fin_relay.worker.startup import start_problems

    problems = start_problems(settings, app.conf)
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

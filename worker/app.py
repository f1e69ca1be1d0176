"""The Celery app: ``celery -A fin_relay.worker.app worker`` (or ``fin-relay worker``).

Importing this module needs no environment: the configuration is built lazily when Celery
first reads it. Its broker comes from the common settings (``FIN_BROKER_URL``, else
``REDIS_URL``), so Celery's own tooling (``celery -A fin_relay.worker.app inspect ping``,
``events``, ``control``, Flower) works with only those set; a *worker* also needs the Fin
settings, and one with bad or missing settings stops at start-up with one line naming the
variable (``celeryd_init``).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from fin_relay.contract.celery_wire import kwargs_repr
from fin_relay.contract.errors import ConfigurationError
from fin_relay.contract.names import CALLS_QUEUE, EVENTS_QUEUE, TASK_QUEUES
from fin_relay.contract.settings import CommonSettings, WorkerSettings, load
from fin_relay.worker import heartbeat, offcontract, transport
from fin_relay.worker.runtime import close_runtime, get_runtime
from fin_relay.worker.startup import announce, start_problems
from fin_relay.worker.tasks import register

log = logging.getLogger("fin_relay.worker")

#: A broker URL that cannot connect, used only when even the common settings (``REDIS_URL``,
#: ``FIN_BROKER_URL``) are invalid (a worker refuses to start before it would try).
_UNCONFIGURED_BROKER = "redis://unconfigured.invalid:6379/0"


def celery_config(settings: CommonSettings) -> dict[str, Any]:
    """The Celery settings that keep fin-relay's guarantees (docs/worker.md).

    The broker, its transport options, queues and routes need only the common settings (what
    ``celery inspect``/``control``/``events`` and Flower use); a worker's settings add its task
    time limit.
    """
    conf = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": settings.fin_relay_visibility_timeout_s,
            # kombu sweeps for expired unacked messages (a killed worker's jobs) only every
            # interval x throttle seconds (10 x 10 by default): sweep every few seconds instead.
            "unacked_restore_interval": max(
                1, min(10, int(settings.fin_relay_visibility_timeout_s // 2))
            ),
            "unacked_restore_throttle": 1,
            # The pool threads ack (and put back) through the channel's connection pool, one
            # connection each for the round trip: kombu caps it at 10, and an ack past the cap
            # fails ("Couldn't ack ... Too many connections") and waits for redelivery. The
            # threads' number bounds it instead.
            "max_connections": None,
            # the take numbers this namespace's call jobs per conversation (worker.transport)
            "fin_relay_namespace": settings.fin_relay_namespace,
        },
        "broker_pool_limit": None,
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": CALLS_QUEUE,
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
            for name in (CALLS_QUEUE, EVENTS_QUEUE)
        ],
        "task_routes": {name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        "task_create_missing_queues": True,
        # Every message is screened before Celery runs it: one that is not a valid job
        # (unknown task name, positional arguments, undecodable body) is dead-lettered instead
        # of being logged whole and dropped (fin_relay.worker.offcontract).
        "worker_consumer": "fin_relay.worker.offcontract:Consumer",
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
        "enable_utc": True,
    }
    if isinstance(settings, WorkerSettings):
        conf["task_time_limit"] = settings.fin_relay_task_time_limit_s
    return conf


def _lazy_config() -> dict[str, Any]:
    """The worker's configuration; without valid Fin settings, the common one (Celery tooling
    needs only the broker; a worker refuses to start at ``celeryd_init``)."""
    try:
        return celery_config(load(WorkerSettings))
    except ConfigurationError:
        pass
    try:
        return celery_config(load(CommonSettings))
    except ConfigurationError:
        return {"broker_url": _UNCONFIGURED_BROKER}  # celeryd_init refuses to start


def create_app() -> Celery:
    """A new Celery app with every fin-relay task registered and the lazy configuration.

    Its broker connections use fin-relay's Redis transport wherever kombu would use its own
    (``fin_relay.worker.transport``: no message lost, no crash, when Redis restarts); the
    same for ``fin-relay worker`` and ``celery -A fin_relay.worker.app worker``.
    """
    celery_app = Celery("fin_relay", set_as_current=False, amqp=transport.TransportSelector)
    celery_app.add_defaults(_lazy_config)
    register(celery_app)
    return celery_app


app = create_app()


def _check_settings(**_: Any) -> None:
    """Fail fast, with one line, before the worker connects anywhere: bad settings, a
    configuration that breaks the delivery guarantees, or a kombu the Redis transport was not
    verified with (``fin_relay.worker.startup.start_problems``, as ``fin-relay worker``)."""
    from fin_relay import observability

    observability.configure_logging("INFO")  # Celery's own start-up warnings as our lines
    try:
        settings = load(WorkerSettings)
    except ConfigurationError as exc:
        print(f"fin-relay worker: {exc}", file=sys.stderr, flush=True)
        os._exit(2)  # Celery swallows exceptions raised by signal handlers
    problems = start_problems(settings, app.conf)
    if problems:
        print(f"fin-relay worker: refusing to start: {problems[0]}", file=sys.stderr, flush=True)
        os._exit(2)
    observability.init_sentry(settings, "worker")


def _structured_logs(logger: Any = None, **_: Any) -> None:
    """One structured line per record: JSON when stderr is not a terminal (log shippers),
    readable text on a terminal (fin_relay.observability); never task arguments or message
    bodies (``install_log_redaction``: on Celery's loggers and on these handlers)."""
    from fin_relay.observability import formatter, install_log_redaction

    chosen = formatter()
    handlers = list(getattr(logger, "handlers", []))
    for handler in handlers:
        handler.setFormatter(chosen)
    install_log_redaction(*handlers)


def _names_only_reprs(headers: Any = None, body: Any = None, **_: Any) -> None:
    """Task messages this process publishes (``task.retry``'s re-publications) carry the
    argument *names* in ``argsrepr``/``kwargsrepr``, not Celery's repr of the values: those
    headers are shown by Celery's logs and tooling."""
    if not isinstance(headers, dict) or "kwargsrepr" not in headers:
        return
    args, kwargs = (
        (body[0], body[1]) if isinstance(body, list | tuple) and len(body) >= 2 else ((), {})
    )
    headers["argsrepr"] = f"({len(args)} positional)" if args else "()"
    if isinstance(kwargs, dict):
        headers["kwargsrepr"] = kwargs_repr(kwargs)


def _quiet_http_logs(**_: Any) -> None:
    # httpx logs every request at INFO; fin-relay logs one line per job outcome instead.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def _consumed_queues(sender: Any) -> list[str]:
    try:
        return [q.name for q in sender.task_consumer.queues]
    except AttributeError:
        return [CALLS_QUEUE, EVENTS_QUEUE]


def _ready(sender: Any = None, **_: Any) -> None:
    runtime = get_runtime()
    hostname = getattr(sender, "hostname", None) or f"pid{os.getpid()}"
    settings = runtime.settings
    slots = int(
        getattr(getattr(sender, "pool", None), "limit", 0) or app.conf.worker_concurrency or 1
    )
    heartbeat.detector = heartbeat.StallDetector(settings.fin_relay_stuck_consumer_s, slots)
    heartbeat.start(runtime, hostname, _consumed_queues(sender))
    if settings.fin_relay_metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.fin_relay_metrics_port, addr="0.0.0.0")
        log.info("metrics on :%d/metrics", settings.fin_relay_metrics_port)
    broker = getattr(getattr(sender, "connection", None), "transport", None)
    log.info(
        "fin-relay worker %s ready (pid %d, broker transport %s)",
        hostname,
        os.getpid(),
        f"{type(broker).__module__}.{type(broker).__qualname__}" if broker else "?",
    )
    # Everything alive now (Celery, the imports, the runtime) lives as long as the process:
    # out of the collector's sight, a full collection no longer walks it in the middle of the
    # jobs (docs/worker.md, "Design measurements": the p99 at 200 jobs/s).
    gc.freeze()


def _task_started(**_: Any) -> None:
    if heartbeat.detector is not None:
        heartbeat.detector.task_started()


def _task_finished(**_: Any) -> None:
    if heartbeat.detector is not None:
        heartbeat.detector.task_finished()


#: How long a stopping worker keeps trying to put back messages it holds (Redis down).
HELD_MESSAGES_SHUTDOWN_WAIT_S = 10.0


def _put_back_held_messages(wait_s: float = HELD_MESSAGES_SHUTDOWN_WAIT_S) -> None:
    """Put back what only this process knows about before exiting (``transport``): messages
    held because their unacked record could not be written, and messages whose take reply
    was lost; or say which are lost."""
    deadline = time.monotonic() + wait_s
    while transport.pending_put_backs():
        try:
            with app.connection_for_write() as connection:
                transport.restore_held_messages(connection)
        except Exception as exc:  # Redis still down: try again until the deadline
            log.debug("held messages not put back yet: %r", exc)
        if not transport.pending_put_backs() or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    lost = transport.held_messages()
    if lost:
        log.critical(
            "stopping with %d message(s) taken from the broker while Redis was down and not "
            "put back (Redis still unreachable after %.0f s): %s",
            len(lost),
            wait_s,
            ", ".join(h.describe() for h in lost),
        )
    unchecked = transport.lost_take_replies()
    if unchecked:
        log.warning(
            "stopping with %d lost take reply(ies) unchecked (Redis unreachable): their "
            "messages stay in the unacked hash, under this process's broker lease: another "
            "worker puts them back once the lease runs out (about 10 s), or the visibility "
            "timeout does",
            unchecked,
        )


def _shutdown(**_: Any) -> None:
    _put_back_held_messages()
    heartbeat.stop()
    close_runtime()


# Connected explicitly (strong references): Celery's signal decorators are untyped.
signals.celeryd_init.connect(_check_settings, weak=False)
signals.after_setup_logger.connect(_quiet_http_logs, weak=False)
signals.after_setup_logger.connect(_structured_logs, weak=False)
signals.before_task_publish.connect(_names_only_reprs, weak=False)
signals.worker_ready.connect(_ready, weak=False)
# the start-up line, for `celery -A fin_relay.worker.app worker` as for `fin-relay worker`
signals.worker_ready.connect(announce, weak=False, dispatch_uid="fin_relay.worker.startup.announce")
# A queue item that is not a broker message at all becomes a dead letter, not a crash.
transport.on_undecodable_item = offcontract.dead_letter_broker_item
signals.task_prerun.connect(_task_started, weak=False)
signals.task_postrun.connect(_task_finished, weak=False)
signals.worker_shutdown.connect(_shutdown, weak=False)
signals.worker_process_shutdown.connect(_shutdown, weak=False)

"""Logs, Sentry and Prometheus metrics for every fin-relay process.

* :func:`configure_logging`: one structured line per event; JSON when stderr is not a terminal.
  Every timestamp is ISO-8601 UTC with milliseconds and ``Z`` (:func:`iso_ms`), in JSON and
  text lines alike (the ingest's access log too). A JSON line carries a log call's structured
  context as fields of its own: every ``extra=`` field, and each ``key=%s`` pair of the
  message's format string (``job=`` -> ``job_id``, ``conv=`` -> ``conversation_id``,
  ``event=`` -> ``event_id``; ``"-"`` -> ``null``), see :func:`format_fields`.
* :func:`init_sentry`: enabled only when ``SENTRY_DSN`` is set; tracing sampled at
  ``FIN_RELAY_TRACES_SAMPLE_RATE`` (default 0: Celery tracing costs CPU per task, see
  docs/worker.md, "Design measurements"). A ``before_send`` scrubber removes the bearer token, webhook secrets,
  signature headers, message bodies and task arguments (customer data) from every event,
  transaction and log (``before_send_log``), including log messages' parameters and the
  breadcrumbs of earlier log lines. Trace headers (``sentry-trace``, ``baggage``) are sent to no
  host (``trace_propagation_targets=[]``): the Sentry SDK would otherwise add them to every
  request to Fin, tracing on or off.
* :func:`install_log_redaction`: a logging filter on Celery's and kombu's loggers (and on the
  handlers fin-relay installs) so no log line carries task arguments or message bodies: Celery
  logs the whole body of a message it cannot run, and task arguments in some records' data.
* Metrics: the counters and histograms below. Each belongs to one process kind
  (:data:`WORKER_METRICS`, :data:`INGEST_METRICS`) and is created only in a process that uses
  it (:func:`enable_metrics`, or its first use), so a process's ``/metrics`` lists its own
  series only. With ``PROMETHEUS_MULTIPROC_DIR`` set, values from every process are aggregated
  at scrape time (:func:`metrics_payload` keeps the asking component's families).
* :func:`mask_url`: a Redis/broker URL with its password replaced, for start-up lines.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# --- logging -------------------------------------------------------------------------------

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
#: Task arguments hold customer data (message bodies, attachments): Celery passes them in a
#: log record's ``data`` extra (with full reprs when the producer was Celery's own client).
_TASK_ARG_KEYS = ("args", "kwargs")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """A record's ``extra=`` fields, without task arguments."""
    out: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key in _RESERVED or key.startswith("_"):
            continue
        if isinstance(value, dict) and any(k in value for k in _TASK_ARG_KEYS):
            out[key] = {k: v for k, v in value.items() if k not in _TASK_ARG_KEYS}
        else:
            out[key] = value
    return out


_second: tuple[int, str] = (-1, "")


def iso_ms(epoch_s: float) -> str:
    """``2026-12-06T17:45:01.123Z``: ISO-8601 UTC with milliseconds, the one timestamp format
    of every fin-relay log line (cheap: the date part is formatted once per second; the cache
    is one tuple, swapped whole, so threads never see half of it)."""
    global _second
    whole = int(epoch_s)
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{cached[1]}.{int((epoch_s - whole) * 1000):03d}Z"


#: ``key=`` names in log messages that have a longer, documented field name in JSON lines.
FIELD_ALIASES = {
    "job": "job_id",
    "conv": "conversation_id",
    "conversation": "conversation_id",
    "event": "event_id",
}
#: Names a parsed field never takes (the line's own keys).
_LINE_KEYS = frozenset({"ts", "level", "logger", "msg", "exc"})
_SPEC = re.compile(
    r"%(?P<key>\([^)]*\))?[#0 +-]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?"
    r"(?P<conv>[diouxXeEfFgGcrsa%])"
)
_KEY_BEFORE = re.compile(r"(?:^|[\s(\[,;])([A-Za-z_][A-Za-z0-9_]*)=$")


@functools.lru_cache(maxsize=2048)
def _field_plan(template: str) -> tuple[int, tuple[tuple[int, str, str, int | None], ...]] | None:
    """For a %-format template: (number of arguments, ((arg index, field, conversion,
    precision), ...)) for each ``key=%x``; None when arguments cannot be matched by position
    (``%(name)s`` or ``*`` widths)."""
    fields: list[tuple[int, str, str, int | None]] = []
    index = 0
    for match in _SPEC.finditer(template):
        conv = match.group("conv")
        if conv == "%":
            continue
        if match.group("key") or match.group("width") == "*" or match.group("precision") == "*":
            return None
        before = _KEY_BEFORE.search(template, 0, match.start())
        if before is not None and before.end() == match.start():
            name = before.group(1)
            precision = match.group("precision")
            field = FIELD_ALIASES.get(name, name)
            if field not in _LINE_KEYS:
                fields.append((index, field, conv, int(precision) if precision else None))
        index += 1
    return index, tuple(fields)


def _json_value(value: Any, conv: str, precision: int | None) -> Any:
    if value is None or (isinstance(value, str) and value == "-"):
        return None  # fin-relay's log lines write "-" for "none"
    if conv in "diu" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if conv in "eEfFgG" and isinstance(value, int | float) and not isinstance(value, bool):
        return round(float(value), precision) if precision is not None else float(value)
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def format_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``key=%s`` pairs of a record's format string, as JSON fields.

    ``log.info("job=%s conv=%s op=%s outcome=%s attempts=%d", ...)`` gives ``job_id``,
    ``conversation_id``, ``op``, ``outcome`` and ``attempts`` (an int); ``"-"`` becomes
    ``null``. Records whose arguments cannot be matched by position give nothing.
    """
    args = record.args
    if not isinstance(record.msg, str) or not isinstance(args, tuple) or not args:
        return {}
    plan = _field_plan(record.msg)
    if plan is None or plan[0] != len(args):
        return {}
    return {field: _json_value(args[i], conv, prec) for i, field, conv, prec in plan[1]}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (:func:`iso_ms`), ``level``, ``logger``, ``msg``, the
    ``key=%s`` pairs of the message (:func:`format_fields`), then every ``extra=`` field (an
    ``extra=`` field wins over a parsed one of the same name)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": iso_ms(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(format_fields(record))
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Readable line for terminals: ts (:func:`iso_ms`) level logger msg key=value ..."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        base = (
            f"{iso_ms(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        text = f"{base} {extras}" if extras else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def json_logs() -> bool:
    """Whether log lines are JSON: when stderr is not a terminal (a file, a pipe, a log
    shipper); readable text on a terminal."""
    return not sys.stderr.isatty()


def formatter(json_lines: bool | None = None) -> logging.Formatter:
    """JSON lines unless stderr is a terminal (``json_lines`` decides when given)."""
    use_json = json_logs() if json_lines is None else json_lines
    return JsonFormatter() if use_json else TextFormatter()


def configure_logging(level: str = "INFO", *, json_lines: bool | None = None) -> None:
    """Route the root logger to stderr; JSON lines unless stderr is a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(json_lines))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    install_log_redaction(handler)


# --- keeping customer data out of log records -----------------------------------------------

#: Text of Celery's log messages that dump a whole message (body, headers, delivery info):
#: "Received unregistered task", "Received invalid task message", "Can't decode message
#: body", "Received and deleted unknown message".
_BODY_DUMP_MARKERS = (
    "The full contents of the message body",
    "Can't decode message body",
    "Received and deleted unknown message",
)
_BODY_DUMP_NOTE = "a message that is not a valid job was refused (%s); its contents are not logged"
#: Celery's and kombu's loggers that may log task arguments or message bodies; a filter on a
#: logger also runs before Sentry's logging integration sees the record.
_REDACTED_LOGGERS = (
    "celery",
    "celery.app.trace",
    "celery.worker",
    "celery.worker.consumer",
    "celery.worker.consumer.consumer",
    "celery.worker.consumer.tasks",
    "celery.worker.request",
    "celery.worker.strategy",
    "celery.worker.control",
    "celery.pool",
    "celery.task",
    "celery.redirected",
    "kombu",
    "kombu.messaging",
    "kombu.transport.virtual",
    "kombu.transport.redis",
)


def _dumps_body(text: object) -> bool:
    return isinstance(text, str) and any(marker in text for marker in _BODY_DUMP_MARKERS)


def _without_task_args(value: dict[Any, Any]) -> dict[Any, Any]:
    return {k: (REDACTED if k in _TASK_ARG_KEYS else v) for k, v in value.items()}


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Remove task arguments and message bodies from ``record``, in place (and return it).

    * a Celery message dumping a whole message becomes one line naming only the exception
      type (its traceback is dropped too: the exception text may quote the body);
    * ``args``/``kwargs`` in the record's format arguments (Celery's task-trace records pass a
      dict holding both) or in its ``data`` extra are replaced by ``[redacted]``.
    """
    if _dumps_body(record.msg) or _dumps_body(getattr(record, "message", None)):
        first = record.args[0] if isinstance(record.args, tuple) and record.args else None
        cause = type(first).__name__ if isinstance(first, BaseException) else "unreadable"
        if record.exc_info and record.exc_info[1] is not None:
            cause = type(record.exc_info[1]).__name__
        record.msg, record.args = _BODY_DUMP_NOTE, (cause,)
        record.exc_info, record.exc_text = None, None
        if hasattr(record, "message"):
            record.message = record.getMessage()
    elif isinstance(record.args, dict) and any(k in record.args for k in _TASK_ARG_KEYS):
        record.args = _without_task_args(record.args)
    data = getattr(record, "data", None)
    if isinstance(data, dict) and any(k in data for k in _TASK_ARG_KEYS):
        record.data = _without_task_args(data)
    return record


class RedactFilter(logging.Filter):
    """A logging filter that keeps every record, minus task arguments and message bodies."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_REDACT = RedactFilter()


def install_log_redaction(*handlers: logging.Handler) -> None:
    """Put :class:`RedactFilter` on Celery's and kombu's loggers and on ``handlers``
    (idempotent). Records of those loggers are redacted before any handler or Sentry sees
    them; a handler's filter covers every record it writes. Python warnings are routed to
    logging (``py.warnings``), so they are written in the same format as every other line."""
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)
    for handler in handlers:
        if _REDACT not in handler.filters:
            handler.addFilter(_REDACT)
    # Python warnings (e.g. Celery's SecurityWarning) become log records too: one line format.
    logging.captureWarnings(True)


# --- Sentry --------------------------------------------------------------------------------

REDACTED = "[redacted]"
_SENSITIVE_KEYS = {
    "authorization",
    "x-fin-agent-api-webhook-signature",
    "cookie",
    "set-cookie",
    "fin_api_token",
    "fin_webhook_secrets",
    "sentry_dsn",
    "token",
    "secret",
    "secrets",
    "password",
    "body",
    "data",
    "kwargs",
    "args",
    "message_body",
    "remark",
    "context",
    "attachments",
    "history",
    "chunk_text",
    "request_body",
}


def _scrub(value: Any, secrets: tuple[str, ...], depth: int = 0) -> Any:
    if depth > 20:
        return REDACTED
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, str) and key.lower() in _SENSITIVE_KEYS:
                out[key] = REDACTED
            elif isinstance(key, str) and key == "message" and isinstance(item, dict):
                out[key] = {
                    k: (REDACTED if k == "body" else _scrub(v, secrets, depth + 1))
                    for k, v in item.items()
                }
            else:
                out[key] = _scrub(item, secrets, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_scrub(item, secrets, depth + 1) for item in value]
    if isinstance(value, str):
        for secret in secrets:
            if secret and secret in value:
                value = value.replace(secret, REDACTED)
        return value
    return value


def _scrub_log_texts(event: dict[str, Any]) -> None:
    """Log-derived text of an event: a Celery message dumping a message body is replaced, and
    the format parameters are dropped (``formatted`` already holds the message)."""
    for key in ("logentry", "message"):
        entry = event.get(key)
        if isinstance(entry, dict):
            if any(_dumps_body(entry.get(k)) for k in ("message", "formatted")):
                entry["message"] = entry["formatted"] = _BODY_DUMP_NOTE % "see the worker log"
            if "params" in entry:
                entry["params"] = []
        elif _dumps_body(entry):
            event[key] = _BODY_DUMP_NOTE % "see the worker log"
    crumbs = event.get("breadcrumbs")
    values = crumbs.get("values") if isinstance(crumbs, dict) else crumbs
    if isinstance(values, list):
        for crumb in values:
            if isinstance(crumb, dict) and _dumps_body(crumb.get("message")):
                crumb["message"] = _BODY_DUMP_NOTE % "see the worker log"


def make_scrubber(secrets: Iterable[str]) -> Any:
    """A Sentry ``before_send`` that removes secrets and customer data from an event."""
    known = tuple(s for s in secrets if s and len(s) >= 4)

    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        _scrub_log_texts(event)
        scrubbed: dict[str, Any] = _scrub(event, known)
        return scrubbed

    return before_send


#: Sentry log attributes holding a log call's format arguments (the body has them already).
_LOG_PARAMETER_PREFIX = "sentry.message.parameter."


def make_log_scrubber(secrets: Iterable[str]) -> Any:
    """A Sentry ``before_send_log`` (Sentry Logs, off unless enabled): the same scrubbing for
    a log's body and attributes; its format parameters are dropped."""
    known = tuple(s for s in secrets if s and len(s) >= 4)

    def before_send_log(log: Any, hint: Any) -> Any:
        if not isinstance(log, dict):
            return log
        body = log.get("body")
        if _dumps_body(body):
            log["body"] = _BODY_DUMP_NOTE % "see the worker log"
        elif isinstance(body, str):  # the log's text itself: only secrets are cut out
            log["body"] = _scrub(body, known)
        attributes = log.get("attributes")
        if isinstance(attributes, dict):
            for key in list(attributes):
                name = str(key)
                last = name.rsplit(".", 1)[-1].lower()
                parameter = name.startswith(_LOG_PARAMETER_PREFIX)
                if parameter or last in _SENSITIVE_KEYS or _dumps_body(attributes[key]):
                    attributes[key] = REDACTED
            log["attributes"] = _scrub(attributes, known)
        return log

    return before_send_log


#: Settings/env vars whose values are secrets: scrubbed from every Sentry event, even in a
#: process that does not use them itself (the worker never needs the webhook secrets).
_SECRET_VARS = ("fin_api_token", "fin_webhook_secrets", "sentry_dsn")


MASK = "***"
_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pass|token|secret)=)[^&;]*")


def mask_url(url: str) -> str:
    """A Redis/broker URL fit for a log line: its password (and a ``password=`` query
    parameter) replaced by ``***``; several ``;``-separated URLs (Sentinel) each masked.
    ``redis://:s3cret@host:6379/0`` -> ``redis://:***@host:6379/0``."""
    from urllib.parse import urlsplit, urlunsplit

    masked: list[str] = []
    for part in url.split(";"):
        text = part.strip()
        try:
            split = urlsplit(text)
            has_password = split.password is not None
        except ValueError:  # unparseable: show the scheme at most
            masked.append(text.split("://", 1)[0] + "://" + MASK if "://" in text else MASK)
            continue
        if has_password:
            userinfo, host = split.netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            text = urlunsplit(split._replace(netloc=f"{user}:{MASK}@{host}"))
        masked.append(_SECRET_QUERY.sub(lambda m: m.group(1) + MASK, text))
    return ";".join(masked)


def _url_passwords(settings: Any) -> list[str]:
    """The passwords in the Redis and broker URLs (``redis://user:password@host``), from the
    settings and the environment: scrubbed like every other secret."""
    from urllib.parse import unquote, urlsplit

    urls = [getattr(settings, attr, None) for attr in ("redis_url", "fin_broker_url")]
    urls += [os.environ.get(var, "") for var in ("REDIS_URL", "FIN_BROKER_URL")]
    found: list[str] = []
    for url in urls:
        if not isinstance(url, str) or "@" not in url:
            continue
        for part in url.split(";"):  # sentinel://a;sentinel://b
            try:
                password = urlsplit(part.strip()).password
            except ValueError:
                continue
            if password:
                found += [password, unquote(password)]
    return found


def init_sentry(
    settings: Any, component: str, *, secrets: Iterable[str] = (), transport: Any = None
) -> bool:
    """Initialise Sentry when ``SENTRY_DSN`` is set; return whether it is on.

    ``component`` is ``worker`` (adds the Celery integration) or ``ingest``. Local variables and
    default PII are never sent. ``transport`` is for tests (capture events in-process).
    """
    dsn = getattr(settings, "sentry_dsn", None)
    if dsn is None:
        return False
    import sentry_sdk

    integrations: list[Any] = []
    if component == "worker":
        from sentry_sdk.integrations.celery import CeleryIntegration

        integrations.append(CeleryIntegration(propagate_traces=False))
    all_secrets = [dsn.get_secret_value(), *secrets]
    raw_values = [os.environ.get(var.upper(), "") for var in _SECRET_VARS]
    for attr in _SECRET_VARS:
        value = getattr(settings, attr, None)
        if value is not None:
            raw_values.append(value.get_secret_value())
    for raw in raw_values:
        all_secrets.append(raw)
        all_secrets.extend(part.strip() for part in raw.split(","))
    all_secrets.extend(_url_passwords(settings))
    sentry_sdk.init(
        dsn=dsn.get_secret_value(),
        environment=getattr(settings, "fin_relay_environment", "production"),
        traces_sample_rate=getattr(settings, "fin_relay_traces_sample_rate", 0.0),
        include_local_variables=False,
        max_request_body_size="never",
        integrations=integrations,
        before_send=make_scrubber(all_secrets),
        before_send_transaction=make_scrubber(all_secrets),
        before_send_log=make_log_scrubber(all_secrets),
        # No sentry-trace/baggage header on any outgoing request (the SDK's default adds them
        # to every request, Fin's included, even with tracing off): fin-relay decides where
        # trace headers go, and today that is nowhere.
        trace_propagation_targets=[],
        transport=transport,
        server_name=f"fin-relay-{component}",
    )
    install_log_redaction()
    sentry_sdk.set_tag("component", component)
    return True


def alert(message: str, **fields: Any) -> None:
    """Report an operator-facing problem to Sentry when it is on (no-op otherwise)."""
    try:
        import sentry_sdk
    except ImportError:  # pragma: no cover
        return
    if sentry_sdk.get_client().is_active():
        with sentry_sdk.new_scope() as scope:
            for key, value in fields.items():
                scope.set_extra(key, value)
            sentry_sdk.capture_message(message, level="error")


# --- metrics -------------------------------------------------------------------------------

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

WORKER = "worker"
INGEST = "ingest"
_M = TypeVar("_M", Counter, Gauge, Histogram)
_CREATE_LOCK = threading.Lock()


class LazyMetric(Generic[_M]):
    """A metric of one process kind (``component``), created in the process's registry on
    :func:`enable_metrics` or its first use: a process that never uses it never lists it
    (nor writes it to ``PROMETHEUS_MULTIPROC_DIR``). ``labels``/``inc``/``set``/``observe``
    forward to the metric."""

    def __init__(self, component: str, name: str, factory: Callable[[], _M]) -> None:
        self.component = component
        self._name = name
        #: the family name in the exposition (a counter's without ``_total``)
        self.family = name.removesuffix("_total")
        self._factory: Callable[[], _M] = factory
        self._metric: _M | None = None

    def get(self) -> _M:
        metric = self._metric
        if metric is None:
            with _CREATE_LOCK:
                if self._metric is None:
                    self._metric = self._factory()
                metric = self._metric
        return metric

    @property
    def created(self) -> bool:
        return self._metric is not None

    def labels(self, *values: str) -> Any:
        return self.get().labels(*values)

    def inc(self, amount: float = 1) -> None:
        metric: Any = self.get()
        metric.inc(amount)

    def set(self, value: float) -> None:
        metric: Any = self.get()
        metric.set(value)

    def observe(self, value: float) -> None:
        metric: Any = self.get()
        metric.observe(value)


def _counter(component: str, name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
    return LazyMetric(component, name, lambda: Counter(name, doc, list(labels)))


def _histogram(component: str, name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
    return LazyMetric(
        component, name, lambda: Histogram(name, doc, list(labels), buckets=_LATENCY_BUCKETS)
    )


def _gauge(component: str, name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
    return LazyMetric(
        component, name, lambda: Gauge(name, doc, list(labels), multiprocess_mode="mostrecent")
    )


# The worker's series (fin_relay/worker/metrics.py enables them when a worker imports it).
CALLS: LazyMetric[Counter] = _counter(
    WORKER, "fin_relay_calls_total", "Fin API calls by operation and outcome",
    ("operation", "outcome"),
)  # fmt: skip
RATE_LIMITED: LazyMetric[Counter] = _counter(
    WORKER, "fin_relay_http_429_total", "429 answers from Fin"
)
RETRIES: LazyMetric[Counter] = _counter(
    WORKER, "fin_relay_retries_total", "Retries scheduled, by reason", ("reason",)
)
LIMITER_WAIT: LazyMetric[Histogram] = _histogram(
    WORKER, "fin_relay_limiter_wait_seconds", "Time a call waited for quota"
)
QUOTA_REMAINING: LazyMetric[Gauge] = _gauge(
    WORKER, "fin_relay_quota_remaining", "X-RateLimit-Remaining as Fin last reported"
)
CALL_LATENCY: LazyMetric[Histogram] = _histogram(
    WORKER, "fin_relay_call_seconds", "Fin HTTP call latency", ("operation",)
)
DEAD_LETTERS: LazyMetric[Counter] = _counter(
    WORKER, "fin_relay_dead_letters_total", "Dead letters by kind and reason", ("kind", "reason")
)
EVENT_LATENCY: LazyMetric[Histogram] = _histogram(
    WORKER,
    "fin_relay_event_ingest_to_publish_seconds",
    "Webhook received -> event published on the stream",
)
SEQUENCE_OVERRUNS: LazyMetric[Counter] = _counter(
    WORKER,
    "fin_relay_sequence_hold_overruns_total",
    "Jobs that proceeded after the per-conversation hold bound",
)
# The ingest's series (create_app enables them).
WEBHOOKS: LazyMetric[Counter] = _counter(
    INGEST, "fin_relay_webhooks_total", "Webhook requests by status code", ("status",)
)
DEDUP_HITS: LazyMetric[Counter] = _counter(
    INGEST, "fin_relay_dedup_hits_total", "Duplicate webhook deliveries absorbed"
)
QUEUE_DEPTH: LazyMetric[Gauge] = _gauge(
    INGEST, "fin_relay_queue_depth", "Messages waiting in a broker queue", ("queue",)
)

ALL_METRICS: tuple[LazyMetric[Any], ...] = (
    CALLS, RATE_LIMITED, RETRIES, LIMITER_WAIT, QUOTA_REMAINING, CALL_LATENCY, DEAD_LETTERS,
    EVENT_LATENCY, SEQUENCE_OVERRUNS, WEBHOOKS, DEDUP_HITS, QUEUE_DEPTH,
)  # fmt: skip
WORKER_METRICS = tuple(m for m in ALL_METRICS if m.component == WORKER)
INGEST_METRICS = tuple(m for m in ALL_METRICS if m.component == INGEST)


def enable_metrics(component: str) -> None:
    """Create every metric of ``component`` (``worker`` or ``ingest``) now, so its series are
    listed from the start (counters at 0) and only its own."""
    chosen = [m for m in ALL_METRICS if m.component == component]
    if not chosen:
        raise ValueError(f"unknown metrics component {component!r}")
    for metric in chosen:
        metric.get()


class _Only:
    """A collector passing on only the families named (multi-process exposition)."""

    def __init__(self, inner: Any, families: frozenset[str]) -> None:
        self._inner = inner
        self._families = families

    def collect(self) -> Iterable[Any]:
        for family in self._inner.collect():
            if family.name in self._families:
                yield family


def metrics_payload(component: str | None = None) -> bytes:
    """Prometheus text exposition: aggregated over processes when multiprocess mode is on.

    ``component`` (``ingest``): in multiprocess mode only that component's families are kept,
    so a ``PROMETHEUS_MULTIPROC_DIR`` shared with workers adds no worker series. Outside it
    the process's own registry holds only the metrics it created.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        if component is None:
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            collected = CollectorRegistry()
            multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
            families = frozenset(m.family for m in ALL_METRICS if m.component == component)
            registry.register(_Only(collected, families))
        return bytes(generate_latest(registry))
    return bytes(generate_latest())


METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

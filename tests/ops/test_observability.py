"""Sentry scrubbing (events captured in-process) and metrics exposition."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
import sentry_sdk

from fin_relay import observability
from fin_relay.contract.settings import IngestSettings, WorkerSettings, load

TOKEN = "fin_token_SUPERSECRET_42"
SECRETS = "whsec_alpha_one,whsec_beta_two"
DSN = "https://publickey123@o0.ingest.sentry.io/1"
CUSTOMER_TEXT = "my card number is 4111 1111 1111 1111"


class Capture:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:  # old-style function transport
        self.events.append(event)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("FIN_API_TOKEN", TOKEN)
    monkeypatch.setenv("FIN_WEBHOOK_SECRETS", SECRETS)
    monkeypatch.setenv("SENTRY_DSN", DSN)
    yield
    monkeypatch.delenv("SENTRY_DSN")  # or init() would pick the DSN up from the environment
    sentry_sdk.init()  # disable again


def _capture_with(component: str, settings: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []

    class T(sentry_sdk.transport.Transport):
        def capture_envelope(self, envelope: Any) -> None:
            for item in envelope.items:
                payload = item.payload.json
                if payload is not None:
                    events.append(payload)

    assert observability.init_sentry(settings, component, transport=T())
    kwargs = {
        "message": {"author": "user", "body": CUSTOMER_TEXT},
        "attachments": [{"type": "file", "data": "BASE64DATA=="}],
    }
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "X-Fin-Agent-API-Webhook-Signature": "sha256=" + "ab" * 32,
    }
    token_local = TOKEN  # noqa: F841 - local variables must not be sent
    body_local = CUSTOMER_TEXT  # noqa: F841
    try:
        # fin-relay never formats message bodies into exception text; tokens it can scrub by value
        raise RuntimeError(f"call failed with token {TOKEN}")
    except RuntimeError:
        with sentry_sdk.new_scope() as scope:
            scope.set_extra("kwargs", kwargs)
            scope.set_extra("headers", headers)
            scope.set_context(
                "celery-job", {"task_name": "fin.reply", "args": [], "kwargs": kwargs}
            )
            sentry_sdk.capture_exception()
    logging.getLogger("t").error("secret %s in a log", SECRETS.split(",")[1])
    observability.alert("401 from Fin", token_hint=TOKEN[:4])
    sentry_sdk.flush()
    return events


def test_nothing_secret_leaves(captured: Any) -> None:
    for cls, component in ((WorkerSettings, "worker"), (IngestSettings, "ingest")):
        events = _capture_with(component, load(cls))
        assert events, "no event captured"
        text = json.dumps(events)
        for needle in (
            TOKEN,
            "whsec_alpha_one",
            "whsec_beta_two",
            "publickey123",
            CUSTOMER_TEXT,
            "BASE64DATA==",
            "ab" * 32,
        ):
            assert needle not in text, (component, needle)
        assert "call failed" in text  # the event itself is there, only scrubbed


def test_sentry_off_without_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("FIN_API_TOKEN", TOKEN)
    assert not observability.init_sentry(load(WorkerSettings), "worker")


def test_metrics_exposition_lists_documented_metrics() -> None:
    observability.enable_metrics(observability.WORKER)
    observability.enable_metrics(observability.INGEST)
    observability.CALLS.labels("start", "succeeded").inc()
    observability.DEDUP_HITS.inc()
    text = observability.metrics_payload().decode()
    for name in (
        "fin_relay_calls_total",
        "fin_relay_http_429_total",
        "fin_relay_retries_total",
        "fin_relay_limiter_wait_seconds",
        "fin_relay_quota_remaining",
        "fin_relay_dead_letters_total",
        "fin_relay_webhooks_total",
        "fin_relay_dedup_hits_total",
        "fin_relay_event_ingest_to_publish_seconds",
        "fin_relay_queue_depth",
        "fin_relay_sequence_hold_overruns_total",
    ):
        assert name in text
    assert 'fin_relay_calls_total{operation="start",outcome="succeeded"}' in text


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    observability.configure_logging("INFO", json_lines=True)
    logging.getLogger("fin_relay.test").info(
        "job done", extra={"job_id": "j1", "conversation_id": "c1"}
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["msg"] == "job done" and record["job_id"] == "j1"
    assert record["conversation_id"] == "c1" and record["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])


def test_metrics_belong_to_one_component_each() -> None:
    worker = {m.family for m in observability.WORKER_METRICS}
    ingest = {m.family for m in observability.INGEST_METRICS}
    assert not worker & ingest
    assert worker | ingest == {m.family for m in observability.ALL_METRICS}
    assert {"fin_relay_webhooks", "fin_relay_dedup_hits", "fin_relay_queue_depth"} == ingest
    with pytest.raises(ValueError, match="unknown metrics component"):
        observability.enable_metrics("bench")


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    return record


def test_json_lines_carry_the_format_strings_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """The worker's lines say ``job=%s conv=%s op=%s outcome=%s ...``: each pair becomes a JSON
    field of its own (documented names; ints stay ints; ``-`` is null)."""
    observability.configure_logging("INFO", json_lines=True)
    log = logging.getLogger("fin_relay.worker.jobs")
    log.info(
        "job=%s conv=%s op=%s outcome=%s attempts=%d latency_ms=%.1f seq=%s status=%s reason=%s"
        " request_id=%s",
        "j1", "c1", "reply", "failed", 3, 12.345, "-", 400, "fin_error", "req-9",
    )  # fmt: skip
    record = _last_json(capsys)
    assert record["msg"].startswith("job=j1 conv=c1 op=reply outcome=failed attempts=3")
    assert {k: record[k] for k in ("job_id", "conversation_id", "op", "outcome")} == {
        "job_id": "j1", "conversation_id": "c1", "op": "reply", "outcome": "failed",
    }  # fmt: skip
    assert record["attempts"] == 3 and record["latency_ms"] == 12.3 and record["seq"] is None
    assert record["status"] == 400 and record["reason"] == "fin_error"
    assert record["request_id"] == "req-9" and "job" not in record

    log.warning("event=%s conv=%s dead-lettered: %s: %s", "e1", "-", "invalid_event", "x")
    record = _last_json(capsys)
    assert record["event_id"] == "e1" and record["conversation_id"] is None
    assert record["level"] == "warning"

    # extra= wins over a parsed field; templates that cannot be matched by position give none
    log.info("job=%s done", "parsed", extra={"job_id": "given", "op": "start"})
    assert _last_json(capsys)["job_id"] == "given"
    log.info("%(job)s", {"job": "j2"})
    assert "job_id" not in _last_json(capsys)
    log.info("job=%*d", 5, 7)
    assert "job_id" not in _last_json(capsys)
    log.info("100%% done job=%s", "j3")
    assert _last_json(capsys)["job_id"] == "j3"
    log.info("msg=%s level=%s", "not mine", "no")  # never overwrites the line's own keys
    record = _last_json(capsys)
    assert record["msg"] == "msg=not mine level=no" and record["level"] == "info"


def test_text_lines_use_the_same_timestamp(capsys: pytest.CaptureFixture[str]) -> None:
    observability.configure_logging("INFO", json_lines=False)
    logging.getLogger("fin_relay.test").info("hello %s", "there")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO +fin_relay.test: hello there$", line
    )


def test_iso_ms() -> None:
    assert observability.iso_ms(0.0) == "1970-01-01T00:00:00.000Z"
    assert observability.iso_ms(1796579101.1239) == "2026-12-06T17:45:01.123Z"
    assert observability.iso_ms(1796579101.9999) == "2026-12-06T17:45:01.999Z"
    assert observability.iso_ms(1796579102.0) == "2026-12-06T17:45:02.000Z"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:s3cret@h:6379/0", "redis://user:***@h:6379/0"),
        ("rediss://u:p%40ss@h:6380/0?ssl_cert_reqs=required", "rediss://u:***@h:6380/0?ssl_cert_reqs=required"),
        ("redis://h:6379/0?password=s3cret&db=1", "redis://h:6379/0?password=***&db=1"),
        ("amqp://guest:guest@h:5672/vhost", "amqp://guest:***@h:5672/vhost"),
        ("sentinel://:a@h1:26379;sentinel://:b@h2:26379", "sentinel://:***@h1:26379;sentinel://:***@h2:26379"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
    ],
)  # fmt: skip
def test_mask_url(url: str, masked: str) -> None:
    assert observability.mask_url(url) == masked


# --- what Celery logs about a message: never its body or arguments -------------------------

MARKER = "CUSTOMER-MARKER-7f3a"


def _celery_records() -> None:
    """Log what Celery logs for messages it cannot run and for task outcomes, through Celery's
    own loggers and message templates, each quoting the marker."""
    from celery.app import trace
    from celery.worker.consumer import consumer

    body = f"[[], {{'message': {{'body': '{MARKER}'}}}}, {{}}] (120b)"
    headers = {"task": "fin.summarise", "argsrepr": f"('{MARKER}',)"}
    try:
        raise KeyError("fin.summarise")
    except KeyError as exc:
        consumer.logger.error(consumer.UNKNOWN_TASK_ERROR, exc, body, headers, {}, exc_info=True)
    try:
        raise ValueError(f"Expecting value: {MARKER}")
    except ValueError as exc:
        consumer.logger.critical(
            consumer.MESSAGE_DECODE_ERROR, exc, "application/json", "utf-8", headers, body,
            exc_info=1,
        )  # fmt: skip
    try:
        raise ValueError(f"invalid: {MARKER}")
    except ValueError as exc:
        consumer.logger.error(consumer.INVALID_TASK_ERROR, exc, body, exc_info=True)
    consumer.logger.warning(consumer.UNKNOWN_FORMAT, body)
    context = {
        "id": "j1", "name": "fin.start", "args": f"('{MARKER}',)",
        "kwargs": f"{{'message': '{MARKER}'}}", "exc": "TypeError()", "description": "raised",
        "traceback": "", "hostname": "h", "internal": False, "runtime": 0.1,
        "return_value": "None", "eta": None,
    }  # fmt: skip
    trace.logger.info(trace.LOG_RECEIVED, context, extra={"data": context})
    trace.logger.error(trace.LOG_FAILURE, context, extra={"data": context})
    logging.getLogger("fin_relay.test").error("a later error carrying the breadcrumbs")


def test_celery_records_are_redacted_in_the_log_and_in_sentry(
    captured: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    events: list[dict[str, Any]] = []

    class T(sentry_sdk.transport.Transport):
        def capture_envelope(self, envelope: Any) -> None:
            events.extend(i.payload.json for i in envelope.items if i.payload.json)

    observability.configure_logging("INFO", json_lines=True)
    assert observability.init_sentry(load(WorkerSettings), "worker", transport=T())
    _celery_records()
    sentry_sdk.flush()
    lines = capsys.readouterr().err.strip().splitlines()
    text = json.dumps(events)
    # every record was written; every error sent (but celery.app.trace's, which Sentry's
    # Celery integration ignores: it reports task failures itself)
    assert len(events) == 4 and len(lines) == 7
    assert MARKER not in text
    assert MARKER not in "\n".join(lines)
    refused = [json.loads(line) for line in lines if "not a valid job" in line]
    assert [r["msg"].rsplit("(", 1)[1] for r in refused] == [
        "KeyError); its contents are not logged",
        "ValueError); its contents are not logged",
        "ValueError); its contents are not logged",
        "unreadable); its contents are not logged",
    ]
    logged = "\n".join(lines)  # the records are there, minus the data
    assert "Task fin.start[j1] received" in logged and "Task fin.start[j1] raised" in logged
    assert all(e.get("logentry", {}).get("params") in (None, []) for e in events)


def test_sentry_logs_are_scrubbed() -> None:
    scrub = observability.make_log_scrubber([TOKEN])
    log = {
        "severity_text": "error",
        "body": f"Received unregistered task ... The full contents of the message body was: {MARKER}",
        "attributes": {
            "sentry.message.template": "Task %(name)s[%(id)s] %(description)s: %(exc)s",
            "sentry.message.parameter.args": f"('{MARKER}',)",
            "sentry.message.parameter.0": MARKER,
            "data": {"kwargs": MARKER},
            "logger.name": "celery.app.trace",
            "note": f"token {TOKEN}",
        },
    }
    out = scrub(log, {})
    assert MARKER not in json.dumps(out) and TOKEN not in json.dumps(out)
    assert out["attributes"]["logger.name"] == "celery.app.trace"
    assert "not a valid job" in out["body"]
    plain = scrub({"body": "job=j1 outcome=succeeded", "attributes": {"job": "j1"}}, {})
    assert plain == {"body": "job=j1 outcome=succeeded", "attributes": {"job": "j1"}}


def test_task_reprs_in_published_headers_are_names_only() -> None:
    from fin_relay.worker import app as worker_app

    headers = {"argsrepr": f"('{MARKER}',)", "kwargsrepr": f"{{'message': '{MARKER}'}}"}
    worker_app._names_only_reprs(headers=headers, body=((MARKER,), {"message": MARKER}, {}))
    assert headers == {"argsrepr": "(1 positional)", "kwargsrepr": "{'message': ...}"}

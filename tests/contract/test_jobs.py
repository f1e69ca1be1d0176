from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import redis

from fin_relay.contract import jobs
from fin_relay.contract.errors import InvalidJobError
from fin_relay.contract.names import Names

BODY = {
    "conversation_id": "c1",
    "user": {"id": "u1"},
    "message": {"author": "user", "body": "hello there"},
    "attachments": [{"type": "file", "name": "a.png", "content_type": "image/png", "data": "QUJD"}],
}


def test_validate_job_splits_options_and_names_fields() -> None:
    kwargs = dict(BODY, relay={"correlation_id": "corr", "metadata": {"k": 1}})
    job = jobs.validate_job("start", kwargs)
    assert job.path == "/fin/start" and job.options.correlation_id == "corr"
    assert "relay" not in job.body and job.conversation_id == "c1"
    with pytest.raises(InvalidJobError, match=r"user\.id"):
        jobs.validate_job(
            "reply",
            {"conversation_id": "c", "user": {}, "message": {"author": "user", "body": "x"}},
        )
    with pytest.raises(InvalidJobError, match=r"relay\.colour"):
        jobs.validate_job("start", dict(BODY, relay={"colour": "red"}))
    with pytest.raises(InvalidJobError, match="procedure_id"):
        jobs.validate_job("procedure_run", {"conversation_id": "c", "user": {"id": "u"}})
    run = jobs.validate_task(
        "fin.procedure_run", {"conversation_id": "c", "user": {"id": "u"}, "procedure_id": "42"}
    )
    assert run.path == "/fin/procedures/42/run"


def test_stamp_timestamp_once() -> None:
    kwargs = json.loads(json.dumps(BODY))
    now = datetime(2025, 1, 24, 10, 0, 0, 123000, tzinfo=UTC)
    assert jobs.stamp_timestamp("start", kwargs, now)
    assert kwargs["message"]["timestamp"] == "2025-01-24T10:00:00.123Z"
    assert not jobs.stamp_timestamp("start", kwargs, now + timedelta(seconds=5))
    assert kwargs["message"]["timestamp"] == "2025-01-24T10:00:00.123Z"
    assert not jobs.stamp_timestamp("csat", {"conversation_id": "c", "rating": "ok"})


def test_expiry() -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert jobs.JobOptions(expires_at=past).expired()
    assert not jobs.JobOptions().expired()


def test_summary_has_no_attachment_data_or_body() -> None:
    summary = jobs.request_summary(BODY)
    text = json.dumps(summary)
    assert "QUJD" not in text and "hello there" not in text
    assert summary["attachments"] == [
        {"type": "file", "name": "a.png", "content_type": "image/png"}
    ]
    assert summary["message"]["body_chars"] == len("hello there")


def test_dead_letter_keeps_payload_and_publishes(redis_client: redis.Redis) -> None:
    names = Names("t")
    pipe = redis_client.pipeline(transaction=False)
    env = jobs.dead_letter(
        pipe,
        names,
        dead_id="j1",
        envelope_id="j1.dead.0",
        kind=jobs.DEAD_JOB,
        task="fin.start",
        task_id="j1",
        kwargs=BODY,
        reason="invalid",
        conversation_id="c1",
        data={"error": "x"},
        maxlen=100,
    )
    pipe.execute()
    stored = json.loads(redis_client.get(names.dead_payload("j1")))
    assert stored == {"task": "fin.start", "task_id": "j1", "queue": "fin.calls", "kwargs": BODY}
    entries = redis_client.xrange(names.dead)
    assert len(entries) == 1 and entries[0][1]["type"] == "job.dead"
    assert json.loads(entries[0][1]["envelope"])["id"] == env.id == "j1.dead.0"
    assert "QUJD" not in entries[0][1]["envelope"]

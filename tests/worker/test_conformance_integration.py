"""Conformance: every operation x ``Intercom-Version`` through a real worker to the simulator,
and every request that reached it re-validated against Intercom's own schema for the version it
carried, objects closed to fields the schema does not list (``allOf`` merged first).

The jobs are sent the way a plain Celery client in any language sends them (the wire format,
no producer): the worker alone must turn them into valid requests, and refuse (``call.failed``,
no request, no retry) what the version does not accept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from fin_relay.contract.fin_api import PREVIEW_ONLY_OPERATIONS
from fin_relay.contract.names import Names
from fin_relay.simulator import spec
from tests.fixtures.worker import enqueue_job, results, wait_for_result, wait_until

pytestmark = pytest.mark.integration
N = Names("fin")
VERSIONS = ("2.14", "2.15", "2.16", "2.17", "Preview")
USER = {"id": "user-1", "name": "Ada", "email": "ada@example.com", "attributes": {"plan": "pro"}}
TS = "2025-01-24T10:01:20.123Z"


def _run(client: redis.Redis, task: str, kwargs: dict[str, Any]) -> Any:
    return wait_for_result(client, enqueue_job(client, task, kwargs), timeout_s=30)


def _event_seen(client: redis.Redis, conversation_id: str, name: str) -> bool:
    return any(
        env.conversation_id == conversation_id and env.type == name
        for env in results(client, stream="events")
    )


def _valid_jobs(client: redis.Redis, version: str) -> dict[str, Any]:
    """The ten kinds of job a service sends, each awaited to its outcome; returns them by name."""
    a, b, c, d = (f"{version}-{x}" for x in "abcd")
    outcomes: dict[str, Any] = {}
    start: dict[str, Any] = {
        "conversation_id": a,
        "message": {"author": "user", "body": "How can I see my account?"},  # no time at all
        "user": USER,
        "attachments": [
            {"type": "url", "url": "https://example.com/invoice.pdf"},
            {"type": "file", "name": "s.png", "content_type": "image/png", "data": "iVBORw0KGgo="},
        ],
        "conversation_metadata": {
            "history": [
                {
                    "author": "user",
                    "body": "I need help",
                    "timestamp_ms": "2025-01-24T10:00:01.000Z",
                },
                {"author": "agent", "body": "With what?", "timestamp": "2025-01-24T10:01:00Z"},
            ],
            "attributes": {"priority_level": "high"},
        },
    }
    outcomes["start"] = _run(client, "fin.start", start)
    wait_until(lambda: _event_seen(client, a, "fin_status_updated"), 20, "turn end of start")
    reply = {
        "conversation_id": a,
        "message": {"author": "user", "body": "Thanks, that solved it", "timestamp_ms": TS},
        "user": {"id": "user-1"},
    }
    outcomes["reply"] = _run(client, "fin.reply", reply)
    wait_until(lambda: _event_seen(client, a, "csat_requested"), 20, "csat_requested")
    outcomes["csat"] = _run(
        client, "fin.csat", {"conversation_id": a, "rating": "amazing", "remark": "Quick!"}
    )
    ask = {
        "conversation_id": b,
        "message": {"author": "user", "body": "Opening hours?", "timestamp": TS},
        "user": USER,
        "conversation_metadata": {"attributes": {"channel": "app"}},
    }
    outcomes["ask"] = _run(client, "fin.ask", ask)
    outcomes["escalate"] = _run(
        client, "fin.escalate", {"conversation_id": b, "context": "VIP customer"}
    )
    outcomes["escalate_user"] = _run(
        client, "fin.escalate", {"user": USER, "message": "I'd like a human, please"}
    )
    outcomes["capabilities"] = _run(client, "fin.capabilities", {"user": USER})
    run = {
        "procedure_id": "12345",
        "conversation_id": c,
        "user": USER,
        "message": {"author": "agent", "body": "Start the password reset"},
        "conversation_metadata": {"attributes": {"order_id": "98765"}},
        "settings": {"email": True},
    }
    outcomes["procedure_run"] = _run(client, "fin.procedure_run", run)
    start_d: dict[str, Any] = {
        "conversation_id": d,
        "message": {"author": "user", "body": "Hello", "timestamp_ms": TS},
        "user": {"id": "user-2"},
    }
    if version == "Preview":
        start_d["settings"] = {"follow_up_questions": False, "email": True}
    outcomes["start_ms_only"] = _run(client, "fin.start", start_d)
    return outcomes


def _refused_jobs(version: str) -> list[tuple[str, dict[str, Any], str]]:
    """(task, kwargs, text the failure must contain): jobs the version does not accept."""
    e = f"{version}-refused"
    message = {"author": "user", "body": "Hi"}
    untimed = {"history": [{"author": "user", "body": "earlier"}]}
    jobs = [
        (
            "fin.start",
            {
                "conversation_id": e,
                "message": message,
                "user": USER,
                "conversation_metadata": untimed,
            },
            "conversation_metadata.history.0",
        ),
        (
            "fin.ask",
            {"conversation_id": e, "message": message, "user": USER, "settings": {"email": True}},
            "settings: not accepted by Intercom-Version Preview",
        ),
        (
            "fin.start",
            {
                "conversation_id": e,
                "message": message,
                "user": USER,
                "settings": {"response_format": "markdown"},
            },
            "settings.response_format: not accepted by Intercom-Version Preview"
            if version == "Preview"
            else f"settings: not accepted by Intercom-Version {version}",
        ),
    ]
    if version != "Preview":
        jobs.append(
            (
                "fin.reply",
                {"conversation_id": e, "message": message, "user": USER, "settings": {}},
                f"settings: not accepted by Intercom-Version {version}",
            )
        )
    return jobs


@pytest.mark.parametrize("version", VERSIONS)
def test_every_operation_reaches_fin_valid_for_its_version(
    version: str,
    redis_client: redis.Redis,
    fin_simulator: Callable,
    celery_worker_proc: Callable,
    event_forwarder,
) -> None:
    sim = fin_simulator(callback_url=event_forwarder.url, reply_delay_ms=50)
    celery_worker_proc(base_url=sim.base_url, env={"FIN_API_VERSION": version})

    outcomes = _valid_jobs(redis_client, version)
    failed = {name: env.data for name, env in outcomes.items() if env.type != "call.succeeded"}
    assert failed == {}

    refused = _refused_jobs(version)
    for task, kwargs, expected in refused:
        env = _run(redis_client, task, kwargs)
        assert env.type == "call.failed", (task, env.data)
        assert env.data["reason"] == "invalid_job" and env.data["attempts"] == 0
        assert expected in env.data["error"]["message"], env.data["error"]["message"]

    requests = sim.control.requests()
    assert len(requests) == len(outcomes)  # nothing refused reached Fin, nothing sent twice
    assert not [r for r in requests if r["conversation_id"] == f"{version}-refused"]
    for entry in requests:
        operation = entry["endpoint"]
        expected_version = "Preview" if operation in PREVIEW_ONLY_OPERATIONS else version
        assert entry["version"] == expected_version, entry
        assert spec.closed_request_schema(entry["version"], operation) is not None
        assert spec.request_errors(entry["version"], operation, entry["body"]) == [], entry
        assert entry["status"] == 200, entry
        message = entry["body"].get("message")
        if operation in ("start", "reply", "ask"):
            # Both timestamps, for one instant (what Fin de-duplicates on).
            assert set(message) >= {"timestamp", "timestamp_ms"}, entry
    stamped = redis_client.hget(N.job(outcomes["start"].data["job_id"]), "ts")
    start = next(
        r for r in requests if r["conversation_id"] == f"{version}-a" and r["endpoint"] == "start"
    )
    assert start["body"]["message"]["timestamp"] == stamped
    assert start["body"]["message"]["timestamp_ms"] == stamped

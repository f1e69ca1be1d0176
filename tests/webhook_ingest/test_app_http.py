"""The ingest over real HTTP with real Redis: status codes, de-dup, enqueued Celery messages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis

from fin_relay.contract.fin_api import format_fin_time
from fin_relay.webhook_ingest.enqueue import task_id_for
from tests.fixtures.ingest import (
    SIGNATURE_HEADER,
    IngestServer,
    queued_events,
    queued_messages,
    sign_body,
    webhook_headers,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def now_iso(delta_s: float = 0.0) -> str:
    return format_fin_time(datetime.now(UTC) + timedelta(seconds=delta_s))


def status_body(conversation_id: str = "c1", status: str = "escalated", **extra: Any) -> bytes:
    event = {
        "event_name": "fin_status_updated",
        "conversation_id": conversation_id,
        "user_id": "u1",
        "status": status,
        "created_at_ms": now_iso(),
        **extra,
    }
    return json.dumps(event).encode()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15.0) as client:
        yield client


def post(http: httpx.Client, server: IngestServer, body: bytes, **headers: str) -> httpx.Response:
    return http.post(server.webhook_url, content=body, headers={**server.headers(body), **headers})


def test_new_event_is_enqueued_as_a_celery_message(
    ingest_server: IngestServer, http: httpx.Client, redis_client: redis.Redis
) -> None:
    body = status_body()
    before_ms = int(time.time() * 1000)
    response = post(http, ingest_server, body)
    assert response.status_code == 202
    assert response.json() == {"status": "accepted"}
    [message] = queued_messages(redis_client)
    assert message["headers"]["task"] == "fin.event"
    assert message["properties"]["delivery_info"]["routing_key"] == "fin.events"
    [kwargs] = queued_events(redis_client)
    assert set(kwargs) == {"event", "event_id", "received_at_ms"}
    assert kwargs["event"] == json.loads(body)
    assert kwargs["event_id"].startswith("evt_")
    assert message["headers"]["id"] == task_id_for(kwargs["event_id"])
    assert before_ms - 1000 <= kwargs["received_at_ms"] <= int(time.time() * 1000) + 1000
    assert redis_client.ttl(f"fin:dedup:{kwargs['event_id']}") > 24 * 3600 - 60


def test_duplicate_answers_200_and_is_not_enqueued_again(
    ingest_server: IngestServer, http: httpx.Client, redis_client: redis.Redis
) -> None:
    body = status_body()
    assert post(http, ingest_server, body).status_code == 202
    # A redelivery that is not byte-identical (key order, spacing) is still the same event.
    reordered = json.dumps(dict(reversed(list(json.loads(body).items()))), indent=1).encode()
    for again in (body, reordered):
        response = post(http, ingest_server, again)
        assert response.status_code == 200
        assert response.json() == {"status": "duplicate"}
    assert redis_client.llen("fin.events") == 1


def test_same_event_three_times_concurrently_is_enqueued_once(
    ingest_server: IngestServer, redis_client: redis.Redis
) -> None:
    bodies = [status_body(f"conv-{i}") for i in range(20)]

    async def deliver() -> list[int]:
        async with httpx.AsyncClient(timeout=15.0) as client:
            tasks = [
                client.post(ingest_server.webhook_url, content=b, headers=ingest_server.headers(b))
                for b in bodies
                for _ in range(3)
            ]
            return [r.status_code for r in await asyncio.gather(*tasks)]

    statuses = asyncio.run(deliver())
    assert sorted(statuses) == sorted([202] * 20 + [200] * 40)
    events = queued_events(redis_client)
    assert sorted(e["event"]["conversation_id"] for e in events) == sorted(
        f"conv-{i}" for i in range(20)
    )


def test_fin_replied_deduplicates_on_message_id(
    ingest_server: IngestServer, http: httpx.Client, redis_client: redis.Redis
) -> None:
    def replied(created: str) -> bytes:
        return json.dumps(
            {
                "event_name": "fin_replied",
                "conversation_id": "c",
                "user_id": "u",
                "message": {"id": "98765", "author": "fin", "body": "<p>hi</p>"},
                "status": "replying",
                "created_at_ms": created,
            }
        ).encode()

    assert post(http, ingest_server, replied(now_iso())).status_code == 202
    assert post(http, ingest_server, replied(now_iso(1))).status_code == 200
    [kwargs] = queued_events(redis_client)
    assert kwargs["event_id"] == "msg_98765"


def test_body_over_the_cap_by_content_length_is_413(
    start_ingest: Callable[..., IngestServer],
    redis_url: str,
    http: httpx.Client,
    redis_client: redis.Redis,
) -> None:
    server = start_ingest(redis_url, env={"FIN_RELAY_MAX_BODY_BYTES": "2048"})
    body = status_body(pad="x" * 4096)
    response = post(http, server, body)
    assert response.status_code == 413
    assert response.json() == {"error": "body_too_large"}
    small = status_body()
    assert post(http, server, small).status_code == 202  # the cap is not in the way below it
    assert redis_client.llen("fin.events") == 1


def test_body_over_the_cap_while_streaming_is_413(
    start_ingest: Callable[..., IngestServer], redis_url: str, redis_client: redis.Redis
) -> None:
    server = start_ingest(redis_url, env={"FIN_RELAY_MAX_BODY_BYTES": "4096"})
    sent = 0

    def chunks() -> Iterator[bytes]:  # chunked transfer, no Content-Length; "endless" body
        nonlocal sent
        while sent < 50 * 1024 * 1024:
            sent += 1024
            yield b" " * 1024

    with httpx.Client(timeout=15.0) as client:
        try:
            response = client.post(
                server.webhook_url,
                content=chunks(),
                headers={
                    "content-type": "application/json",
                    SIGNATURE_HEADER: "sha256=" + "0" * 64,
                },
            )
            assert response.status_code == 413
        except httpx.TransportError:
            pass  # the server answered 413 and closed while we were still sending
    assert sent < 50 * 1024 * 1024  # it stopped reading long before the "end"
    assert redis_client.llen("fin.events") == 0
    lines = _wait_for_access(server, lambda line: line["status"] == 413)
    assert lines[-1]["error"] == "body_too_large"


def _wait_for_access(
    server: IngestServer, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = [line for line in server.access_lines() if predicate(line)]
        if lines:
            return lines
        time.sleep(0.05)
    pytest.fail(f"no matching access line in:\n{server.log_text()[-2000:]}")


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("", 415),
        ("application/json; charset=utf-8", 202),
        ("Application/JSON", 202),
    ],
)
def test_content_type(
    ingest_server: IngestServer,
    http: httpx.Client,
    redis_client: redis.Redis,
    content_type: str,
    status: int,
) -> None:
    body = status_body()
    headers = {**ingest_server.headers(body), "content-type": content_type}
    response = http.post(ingest_server.webhook_url, content=body, headers=headers)
    assert response.status_code == status
    assert redis_client.llen("fin.events") == (1 if status == 202 else 0)


def test_bad_signatures_are_401_and_not_enqueued(
    ingest_server: IngestServer, http: httpx.Client, redis_client: redis.Redis
) -> None:
    body = status_body()
    for headers in (
        webhook_headers(body, None),
        webhook_headers(body, "wrong-secret"),
        {**webhook_headers(body), SIGNATURE_HEADER: "sha256=zz"},
        {**webhook_headers(body), SIGNATURE_HEADER: sign_body(body + b" ")},
    ):
        response = http.post(ingest_server.webhook_url, content=body, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"error": "invalid_signature"}
    assert redis_client.llen("fin.events") == 0


def test_rotation_two_secrets_both_accepted(
    start_ingest: Callable[..., IngestServer], redis_url: str, http: httpx.Client
) -> None:
    server = start_ingest(redis_url, secrets=("old-secret", "new-secret"))
    for i, secret in enumerate(("old-secret", "new-secret")):
        body = status_body(f"c{i}")
        response = http.post(
            server.webhook_url, content=body, headers=webhook_headers(body, secret)
        )
        assert response.status_code == 202


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1,2,3]", "not_an_object"),
        (b'{"event_name": 5}', "invalid_event_name"),
        (
            b'{"event_name":"x","conversation_id":"\\ud800","created_at_ms":"2099-01-01T00:00:00Z"}',
            "invalid_unicode",
        ),
        (  # the de-dup key is the message id: a lone surrogate cannot be hashed as UTF-8
            b'{"event_name":"fin_replied","conversation_id":"c","message":{"id":"\\ud800"},'
            b'"created_at_ms":"2099-01-01T00:00:00Z"}',
            "invalid_unicode",
        ),
    ],
)
def test_signed_but_invalid_is_400(
    ingest_server: IngestServer,
    http: httpx.Client,
    redis_client: redis.Redis,
    body: bytes,
    code: str,
) -> None:
    response = post(http, ingest_server, body)
    assert response.status_code == 400
    assert response.json() == {"error": code}
    assert redis_client.llen("fin.events") == 0


PING = b'{"type":"notification_event","data":{"item":{"type":"ping"}}}'


def _signature_headers(kind: str, body: bytes) -> dict[str, str]:
    headers = webhook_headers(body, None)
    if kind == "valid":
        headers[SIGNATURE_HEADER] = sign_body(body)
    elif kind == "wrong_secret":
        headers[SIGNATURE_HEADER] = sign_body(body, "not-the-secret")
    elif kind == "garbage":
        headers[SIGNATURE_HEADER] = "sha256=zz"
    return headers


@pytest.mark.parametrize("kind", ["valid", "none", "wrong_secret", "garbage", "repeated"])
@pytest.mark.parametrize("body", [PING, b"{}", b' \n{"conversation_id":"c","data":[1]}'])
def test_test_request_is_200_whatever_its_signature_logged_not_enqueued(
    ingest_server: IngestServer,
    http: httpx.Client,
    redis_client: redis.Redis,
    kind: str,
    body: bytes,
) -> None:
    """The callback-URL settings page sends a JSON object without ``event_name``; integrators
    report it must be answered 200, and it may come unsigned or signed otherwise."""
    headers: Any = _signature_headers(kind, body)
    if kind == "repeated":  # the valid header twice counts as unsigned
        headers = [*headers.items(), *[(SIGNATURE_HEADER, sign_body(body))] * 2]
    response = http.post(ingest_server.webhook_url, content=body, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"status": "ignored"}
    assert redis_client.llen("fin.events") == 0
    assert not redis_client.keys("fin:dedup:*")
    [line] = _wait_for_access(ingest_server, lambda line: line["dedup"] == "ping")
    assert line["status"] == 200 and line["error"] is None
    # An unsigned one is logged at DEBUG only (anyone can send it; the access log has it).
    assert ("test request" in ingest_server.log_text()) == (kind == "valid")


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_name":"fin_status_updated","conversation_id":"c"}',
        b'{"event_name":5}',  # signed, this would be 400: unsigned it is not looked at further
        b"[1,2]",
        b"{not json",
        b'"text"',
        b"",
        b'{"conversation_id":"c"} trailing',
        b'{"a":' + b"[" * 600 + b"]" * 600 + b"}",  # too deep to be a test request
    ],
)
def test_unsigned_anything_but_a_test_request_is_401(
    ingest_server: IngestServer, http: httpx.Client, redis_client: redis.Redis, body: bytes
) -> None:
    for kind in ("none", "wrong_secret", "garbage"):
        response = http.post(
            ingest_server.webhook_url, content=body, headers=_signature_headers(kind, body)
        )
        assert response.status_code == 401, kind
        assert response.json() == {"error": "invalid_signature"}
    assert redis_client.llen("fin.events") == 0


def test_signature_without_the_prefix_is_accepted(
    ingest_server: IngestServer, http: httpx.Client, redis_client: redis.Redis
) -> None:
    body = status_body("c-bare")
    bare = sign_body(body).removeprefix("sha256=")
    headers = {**webhook_headers(body, None), SIGNATURE_HEADER: bare}
    assert http.post(ingest_server.webhook_url, content=body, headers=headers).status_code == 202
    headers[SIGNATURE_HEADER] = bare[:-1] + ("0" if bare[-1] != "0" else "1")
    assert http.post(ingest_server.webhook_url, content=body, headers=headers).status_code == 401
    assert redis_client.llen("fin.events") == 1


@pytest.mark.parametrize(
    "created_at_ms", [None, "yesterday", 1737712800123, "2025-13-01T00:00:00Z", "absent"]
)
def test_known_event_without_a_valid_created_at_ms_is_accepted(
    ingest_server: IngestServer,
    http: httpx.Client,
    redis_client: redis.Redis,
    created_at_ms: Any,
) -> None:
    """No replay check is possible for it; it is still de-duplicated."""
    event: dict[str, Any] = {
        "event_name": "fin_status_updated",
        "conversation_id": "c-no-time",
        "user_id": "u1",
        "status": "complete",
    }
    if created_at_ms != "absent":
        event["created_at_ms"] = created_at_ms
    body = json.dumps(event).encode()
    response = post(http, ingest_server, body)
    assert (response.status_code, response.json()) == (202, {"status": "accepted"})
    reordered = json.dumps(dict(reversed(list(event.items()))), indent=1).encode()
    assert post(http, ingest_server, reordered).status_code == 200  # the same event
    other = json.dumps({**event, "status": "escalated"}).encode()
    assert post(http, ingest_server, other).status_code == 202  # a different one
    first, second = queued_events(redis_client)
    assert first["event"] == event and first["event_id"] != second["event_id"]


def test_unknown_event_is_accepted_with_its_name(
    ingest_server: IngestServer, http: httpx.Client, redis_client: redis.Redis
) -> None:
    body = json.dumps(
        {
            "event_name": "fin_brand_new_event",
            "conversation_id": "c9",
            "created_at_ms": now_iso(),
            "whatever": {"nested": [1, 2]},
        }
    ).encode()
    assert post(http, ingest_server, body).status_code == 202
    [kwargs] = queued_events(redis_client)
    assert kwargs["event"]["event_name"] == "fin_brand_new_event"
    assert kwargs["event"] == json.loads(body)


def test_replayed_old_event_is_refused(
    ingest_server: IngestServer, http: httpx.Client, redis_client: redis.Redis
) -> None:
    old = status_body(created_at_ms=now_iso(-(24 * 3600 + 60)))
    response = post(http, ingest_server, old)
    assert response.status_code == 400
    assert response.json() == {"error": "event_too_old"}
    assert redis_client.llen("fin.events") == 0
    assert (
        "event_too_old"
        in _wait_for_access(ingest_server, lambda line: line["status"] == 400)[0]["error"]
    )


def test_probe_health_and_unknown_routes(ingest_server: IngestServer, http: httpx.Client) -> None:
    assert http.head(ingest_server.webhook_url).status_code == 200
    assert http.get(ingest_server.webhook_url).status_code == 200
    assert http.get(f"{ingest_server.url}/healthz").status_code == 200
    assert http.get(f"{ingest_server.url}/readyz").status_code == 200
    assert http.get(f"{ingest_server.url}/nope").status_code == 404
    response = http.put(ingest_server.webhook_url, content=b"{}")
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]


def test_access_log_has_the_fields_and_no_secrets(
    ingest_server: IngestServer, http: httpx.Client
) -> None:
    body = status_body("conv-log", secret_field="do-not-log-me")
    assert post(http, ingest_server, body).status_code == 202
    [line] = _wait_for_access(ingest_server, lambda line: line["conversation_id"] == "conv-log")
    assert line["method"] == "POST" and line["path"] == "/webhooks/fin"
    assert line["status"] == 202 and line["event_name"] == "fin_status_updated"
    assert line["dedup"] == "new" and isinstance(line["duration_ms"], float)
    text = ingest_server.log_text()
    assert "do-not-log-me" not in text
    assert sign_body(body) not in text and ingest_server.secrets[0] not in text


def test_namespace_prefixes_the_dedup_marks(
    start_ingest: Callable[..., IngestServer],
    redis_url: str,
    http: httpx.Client,
    redis_client: redis.Redis,
) -> None:
    server = start_ingest(redis_url, namespace="acme")
    assert post(http, server, status_body()).status_code == 202
    keys = redis_client.keys("*dedup*")
    assert len(keys) == 1 and keys[0].startswith("acme:dedup:evt_")

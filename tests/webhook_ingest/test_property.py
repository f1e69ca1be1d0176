"""Property tests over headers and bodies: never a 5xx, nothing enqueued without a valid signature
(the settings page's test request, a JSON object without ``event_name``, is 200 whatever its
signature, and never enqueued either).

In-process ASGI calls (hypothesis, fast) against real Redis, and 10,000 random requests over real
HTTP against a real server.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fin_relay.contract.settings import IngestSettings, load
from fin_relay.webhook_ingest.accesslog import AccessLog
from fin_relay.webhook_ingest.app import IngestApp
from tests.fixtures.ingest import TEST_SECRET, IngestServer, sign_body

pytestmark = [pytest.mark.integration]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
event_objects = st.fixed_dictionaries(
    {},
    optional={
        "event_name": st.sampled_from(
            ["fin_replied", "fin_status_updated", "fin_reply_chunk", "csat_requested", "x_new"]
        )
        | json_values,
        "conversation_id": st.text(max_size=10) | json_values,
        "status": st.sampled_from(["replying", "complete"]) | json_values,
        "created_at_ms": st.sampled_from(
            ["2099-01-01T00:00:00.000Z", "2025-01-24T10:00:00.123Z", "bad"]
        )
        | json_values,
        "message": st.fixed_dictionaries({}, optional={"id": json_values}) | json_values,
        "chunk_index": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    event_objects.map(lambda v: json.dumps(v).encode()),
    st.just(b'{"type":"ping"}'),  # the test request: 200 whatever the signature
)
signature_kinds = st.sampled_from(
    ["none", "valid", "valid_upper", "wrong_secret", "garbage", "duplicate"]
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "", None]
) | st.text(max_size=30)
header_bytes = st.binary(max_size=80)


def make_signature(kind: str, body: bytes, garbage: bytes) -> list[tuple[bytes, bytes]]:
    name = b"x-fin-agent-api-webhook-signature"
    if kind == "none":
        return []
    if kind == "garbage":
        return [(name, garbage)]
    if kind == "wrong_secret":
        return [(name, sign_body(body, "not-the-secret").encode())]
    valid = sign_body(body, TEST_SECRET).encode()
    if kind == "duplicate":
        return [(name, valid), (name, valid)]
    return [(name, valid.upper() if kind == "valid_upper" else valid)]


async def asgi_post(app: IngestApp, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> int:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/webhooks/fin",
        "headers": headers,
        "query_string": b"",
    }
    pending = list(chunks) or [b""]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[-1]["type"] == "http.response.body"
    return int(sent[0]["status"])


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def app(redis_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[IngestApp]:
    settings_ = load(
        IngestSettings,
        redis_url=redis_url,
        fin_webhook_secrets=TEST_SECRET,
        fin_relay_max_body_bytes=200,
    )
    application = IngestApp(settings_, access_log=AccessLog(enabled=False))
    yield application
    loop.run_until_complete(application.aclose())


@pytest.mark.timeout(240)
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=bodies,
    kind=signature_kinds,
    garbage=header_bytes,
    ctype=content_types,
    split=st.integers(min_value=0, max_value=300),
    with_length=st.booleans(),
    extra=st.lists(st.tuples(header_bytes, header_bytes), max_size=3),
)
def test_asgi_never_5xx_and_unsigned_never_enqueued(
    app: IngestApp,
    loop: asyncio.AbstractEventLoop,
    redis_client: redis.Redis,
    body: bytes,
    kind: str,
    garbage: bytes,
    ctype: str | None,
    split: int,
    with_length: bool,
    extra: list[tuple[bytes, bytes]],
) -> None:
    headers = [(k.lower(), v) for k, v in extra]
    if ctype is not None:
        headers.append((b"content-type", ctype.encode()))
    if with_length:
        headers.append((b"content-length", str(len(body)).encode()))
    headers += make_signature(kind, body, garbage)
    chunks = [body[:split], body[split:]] if 0 < split < len(body) else [body]
    before = redis_client.llen("fin.events")
    status = loop.run_until_complete(asgi_post(app, headers, chunks))
    after = redis_client.llen("fin.events")
    assert status < 500
    if kind not in ("valid", "valid_upper"):
        assert after == before
        assert status in (200, 400, 401, 413, 415)
        if status == 200:  # only the settings page's test request, whatever its signature
            assert is_test_request_body(body)
    assert (after - before) == (1 if status == 202 else 0)


def is_test_request_body(body: bytes) -> bool:
    """A JSON object without ``event_name`` (what the ingest answers 200 unsigned)."""
    try:
        value = json.loads(body)
    except ValueError:
        return False
    return isinstance(value, dict) and "event_name" not in value


def random_request(rng: random.Random) -> tuple[bytes, dict[str, str], bool]:
    """(body, headers, validly signed) for one random request."""
    choice = rng.random()
    if choice < 0.3:
        body = rng.randbytes(rng.randint(0, 2000))
    elif choice < 0.6:
        body = json.dumps(
            {
                "event_name": rng.choice(["fin_replied", "x", 3, None]),
                "conversation_id": str(rng.random()),
                "created_at_ms": "2099-01-01T00:00:00.000Z",
            }
        ).encode()
    else:
        body = json.dumps([rng.random() for _ in range(rng.randint(0, 20))]).encode()
    headers = {
        "content-type": rng.choice(["application/json", "text/plain", "application/json;x=1"])
    }
    roll = rng.random()
    signed = False
    if roll < 0.1:
        headers["x-fin-agent-api-webhook-signature"] = sign_body(body)
        signed = True
    elif roll < 0.4:
        headers["x-fin-agent-api-webhook-signature"] = sign_body(body, "wrong")
    elif roll < 0.8:
        alphabet = "0123456789abcdefABCDEF=sha256 \t;,x"
        headers["x-fin-agent-api-webhook-signature"] = "".join(
            rng.choice(alphabet) for _ in range(rng.randint(0, 90))
        ).strip()
    return body, headers, signed


@pytest.mark.timeout(120)
def test_ten_thousand_random_requests_over_http(
    ingest_server: IngestServer, redis_client: redis.Redis
) -> None:
    rng = random.Random(20261129)
    requests = [random_request(rng) for _ in range(10_000)]

    async def run() -> list[tuple[int, bool]]:
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
            sem = asyncio.Semaphore(16)

            async def one(body: bytes, headers: dict[str, str], signed: bool) -> tuple[int, bool]:
                async with sem:
                    r = await client.post(ingest_server.webhook_url, content=body, headers=headers)
                    return r.status_code, signed

            return await asyncio.gather(*(one(*req) for req in requests))

    results = asyncio.run(run())
    statuses = [status for status, _ in results]
    assert max(statuses) < 500
    assert all(status in (400, 401, 415) for status, signed in results if not signed)
    # (no unsigned test request among these bodies: every JSON object has an event_name)
    accepted = sum(1 for status in statuses if status == 202)
    assert accepted > 0  # some validly signed events were accepted...
    assert redis_client.llen("fin.events") == accepted  # ...and only those were enqueued

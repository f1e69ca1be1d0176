"""Bad input: 10,000 seeded random raw HTTP requests to the real ingest — random methods, paths,
header names and values, content types, declared lengths (short, long, non-numeric, repeated),
chunked bodies (valid and malformed), random bodies and signatures, none of them validly
signed: zero 5xx, no hang, and nothing enqueued (``fin.events`` and the de-dup marks stay empty).

Complements ``tests/webhook_ingest/test_property.py::test_ten_thousand_random_requests_over_http``
(well-formed HTTP via httpx, mixed with valid signatures: asserts only signed events are
enqueued); this one goes below httpx, where a client cannot produce malformed framing.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import pytest
import redis

from tests.fixtures.ingest import IngestServer, sign_body
from tests.reliability.helpers import report

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

REQUESTS = 10_000
CONCURRENCY = 32
ANSWER_TIMEOUT_S = 15.0
METHODS = ["POST"] * 6 + ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"]
PATHS = ["/webhooks/fin"] * 8 + ["/webhooks/fin/", "/webhooks", "/", "/healthz", "/readyz", "/x%00"]
SIG = "x-fin-agent-api-webhook-signature"


def event_body(rng: random.Random) -> bytes:
    event = {
        "event_name": rng.choice(["fin_replied", "fin_status_updated", "x_new", 7, None]),
        "conversation_id": f"bad-{rng.random()}",
        "status": "complete",
        "created_at_ms": "2099-01-01T00:00:00.000Z",
        "message": {"id": str(rng.random()), "author": "fin", "body": "b"},
        "user_id": "u",
    }
    return json.dumps(event).encode()


def random_body(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.4:
        return event_body(rng)
    if roll < 0.7:
        return rng.randbytes(rng.randint(0, 3000))
    if roll < 0.8:
        return b""
    return b"[" * rng.randint(1, 5000)  # deep nesting


def bad_signature(rng: random.Random, body: bytes) -> list[str]:
    """Signature headers that are never valid for ``body`` under TEST_SECRET."""
    wrong = sign_body(body, "wrong-secret")
    right = sign_body(body)
    roll = rng.random()
    if roll < 0.2:
        return []
    if roll < 0.4:
        return [wrong]
    if roll < 0.5:
        return [right, right]  # repeated header: treated as unsigned
    if roll < 0.6:
        return ["sha256=" + right[7:-1] + ("0" if right[-1] != "0" else "1")]  # one digit off
    if roll < 0.7:
        return ["sha1=" + right[7:47]]
    alphabet = "0123456789abcdefABCDEF=sha256 \t;,x\u00e9"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 100)))
    return [text.strip()]


def random_request(rng: random.Random) -> bytes:
    method, path = rng.choice(METHODS), rng.choice(PATHS)
    body = random_body(rng)
    headers: list[tuple[str, str]] = [("host", "127.0.0.1"), ("connection", "close")]
    ctype = rng.choice(
        ["application/json", "APPLICATION/JSON; charset=utf-8", "text/plain", "", "json", None]
    )
    if ctype is not None:
        headers.append(("content-type", ctype))
    headers += [(SIG, value) for value in bad_signature(rng, body)]
    for _ in range(rng.randint(0, 3)):
        name = "".join(rng.choice("abcdefxyz-_") for _ in range(rng.randint(1, 12)))
        headers.append((f"x-{name}", "".join(chr(rng.randint(32, 126)) for _ in range(20))))
    framing = rng.random()
    if framing < 0.6:
        headers.append(("content-length", str(len(body))))
        payload = body
    elif framing < 0.7:
        headers.append(("content-length", str(max(0, len(body) - rng.randint(1, 50)))))
        payload = body  # declared shorter: the rest is garbage after the request
    elif framing < 0.75:
        headers.append(("content-length", str(len(body) + rng.randint(1, 50))))
        payload = body  # declared longer: the client then half-closes
    elif framing < 0.8:
        headers.append(("content-length", rng.choice(["abc", "-1", "1e3", "99999999999999"])))
        payload = body
    elif framing < 0.85:
        headers += [("content-length", str(len(body))), ("content-length", "0")]
        payload = body
    elif framing < 0.95:
        headers.append(("transfer-encoding", "chunked"))
        size = rng.randint(1, 500)
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        if rng.random() < 0.3:
            payload = payload.replace(b"\r\n", b"\n", 1)  # malformed chunk framing
    else:
        payload = body  # no length at all
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + payload


async def send_raw(port: int, request: bytes) -> int | str:
    """The status code, ``"closed"`` when the server closed without answering, or raises."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        line = await asyncio.wait_for(reader.readline(), ANSWER_TIMEOUT_S)
        if not line:
            return "closed"
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else f"garbled:{line[:20]!r}"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionResetError, BrokenPipeError):
            pass


async def run_all(port: int, requests: list[bytes]) -> list[int | str]:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(request: bytes) -> int | str:
        async with sem:
            try:
                return await send_raw(port, request)
            except TimeoutError:
                return "timeout"

    return await asyncio.gather(*(one(r) for r in requests))


def test_ten_thousand_malformed_unsigned_requests_never_5xx_never_enqueue(
    ingest_server: IngestServer, redis_client: redis.Redis
) -> None:
    rng = random.Random(20261129)
    requests = [random_request(rng) for _ in range(REQUESTS)]
    answers = asyncio.run(run_all(ingest_server.port, requests))
    counts = Counter(str(a) for a in answers)
    server_errors = sum(1 for a in answers if isinstance(a, int) and a >= 500)
    report(
        "test_bad_input::test_ten_thousand_malformed_unsigned_requests_never_5xx_never_enqueue",
        requests=len(answers),
        answers=dict(counts.most_common()),
        server_errors=server_errors,
        enqueued=redis_client.llen("fin.events"),
        dedup_marks=len(redis_client.keys("fin:dedup:*")),
        ingest_alive=ingest_server.process.poll() is None,
    )
    assert server_errors == 0, counts
    assert counts.get("202", 0) == 0, counts
    assert counts.get("timeout", 0) == 0, counts  # never a hang
    assert not any(k.startswith("garbled") for k in counts), counts
    assert redis_client.llen("fin.events") == 0
    assert redis_client.keys("fin:dedup:*") == []
    assert ingest_server.process.poll() is None  # still serving

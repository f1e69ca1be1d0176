"""The webhook endpoint most teams write: FastAPI, verify the HMAC, ``task.delay()``.

Served by the same stack as every other ingest variant (uvicorn, uvloop + httptools, one
process, access log off): ``uvicorn fin_relay.bench.bare_apps:fastapi_app``. It verifies the
signature over the raw body with ``hmac.compare_digest`` (same secret and header as the other
variants), parses the JSON, and hands it to Celery with ``naive_event.delay(payload)`` — Celery's
synchronous publish, which blocks the event loop for its round trip to Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from fastapi import FastAPI, Request, Response

from fin_relay.bench.naive_celery import naive_event

SECRET = b"bench-secret"  # the same as fin_relay.bench.ingest_bench.SECRET

fastapi_app = FastAPI()


@fastapi_app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@fastapi_app.post("/webhooks/fin", status_code=202)
async def webhook(request: Request) -> Any:
    body = await request.body()
    header = request.headers.get("x-fin-agent-api-webhook-signature", "")
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(header, expected):
        return Response(status_code=401)
    payload = json.loads(body)
    naive_event.delay(payload)
    return {"status": "accepted"}

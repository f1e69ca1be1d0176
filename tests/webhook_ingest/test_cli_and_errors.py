"""Start-up refusal, multi-process mode, and the catch-all: a 500 never enqueues anything."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis

from fin_relay.contract.fin_api import format_fin_time
from fin_relay.contract.settings import IngestSettings, load
from fin_relay.webhook_ingest.accesslog import AccessLog
from fin_relay.webhook_ingest.app import IngestApp
from tests.fixtures.ingest import TEST_SECRET, IngestServer, webhook_headers

pytestmark = [pytest.mark.timeout(120)]


def run_cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fin_relay.cli", "ingest", "--port", "1"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_refuses_to_start_without_a_secret() -> None:
    result = run_cli({"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "fin-relay ingest: configuration error: FIN_WEBHOOK_SECRETS is required but not set"
    ]


def test_refuses_blank_secrets() -> None:
    result = run_cli({"REDIS_URL": "redis://127.0.0.1:1/0", "FIN_WEBHOOK_SECRETS": " , "})
    assert result.returncode == 2
    assert "FIN_WEBHOOK_SECRETS" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_refuses_hex_encoding_with_a_secret_that_is_not_hex() -> None:
    result = run_cli(
        {
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "FIN_WEBHOOK_SECRETS": "0a1b2c3d,plain-text-secret",
            "FIN_RELAY_WEBHOOK_SECRET_ENCODING": "hex",
        }
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        "fin-relay ingest: configuration error: FIN_RELAY_WEBHOOK_SECRET_ENCODING "
    )
    assert "entry 2 of 2" in line
    assert "plain-text-secret" not in line and "0a1b2c3d" not in line


def event_body() -> bytes:
    return json.dumps(
        {
            "event_name": "fin_status_updated",
            "conversation_id": "c",
            "user_id": "u",
            "status": "complete",
            "created_at_ms": format_fin_time(datetime.now(UTC)),
        }
    ).encode()


@pytest.mark.integration
def test_multi_process_mode_serves(
    start_ingest: Callable[..., IngestServer], redis_url: str, redis_client: redis.Redis
) -> None:
    server = start_ingest(redis_url, workers=2)
    with httpx.Client(timeout=15) as http:
        for i in range(6):
            body = json.dumps(
                {
                    "event_name": "e",
                    "conversation_id": str(i),
                    "created_at_ms": format_fin_time(datetime.now(UTC)),
                }
            ).encode()
            assert (
                http.post(
                    server.webhook_url, content=body, headers=server.headers(body)
                ).status_code
                == 202
            )
    assert redis_client.llen("fin.events") == 6


@pytest.mark.integration
def test_unexpected_error_is_500_logged_and_nothing_enqueued(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_clock() -> int:
        raise RuntimeError("clock exploded")

    settings = load(IngestSettings, redis_url=redis_url, fin_webhook_secrets=TEST_SECRET)
    app = IngestApp(settings, access_log=AccessLog(enabled=False), clock_ms=broken_clock)
    body = event_body()
    headers = [(k.lower().encode(), v.encode()) for k, v in webhook_headers(body).items()]
    sent: list[dict[str, Any]] = []

    async def call() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(dict(message))

        scope = {"type": "http", "method": "POST", "path": "/webhooks/fin", "headers": headers}
        await app(scope, receive, send)
        await app.aclose()

    asyncio.run(call())
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"error": "internal_error"}
    assert redis_client.llen("fin.events") == 0 and not redis_client.keys("fin:dedup:*")
    assert any("clock exploded" in (r.exc_text or str(r.exc_info)) for r in caplog.records)

"""Every entry point refuses a bad configuration the same way, through the real processes:
``fin-relay worker``, ``celery -A fin_relay.worker.app worker``, ``fin-relay ingest`` (also
with ``--workers 2``), ``fin-relay enqueue`` and ``fin-relay doctor`` print ONE line naming the
variable (a URL's password masked), exit 2, and show no traceback. An empty value means unset:
a process given ``FIN_BROKER_URL=""`` and ``SENTRY_DSN=""`` runs on ``REDIS_URL`` without
Sentry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from fin_relay.contract.fin_api import format_fin_time
from tests.fixtures.ingest import queued_events, webhook_headers

pytestmark = [pytest.mark.timeout(180)]

PASSWORD = "pw-Zq81-not-for-logs"
FIN_RELAY = [sys.executable, "-m", "fin_relay.cli"]
CELERY_WORKER = [sys.executable, "-m", "celery", "-A", "fin_relay.worker.app", "worker"]
REPO = Path(__file__).resolve().parents[2]

#: every way to start a component, with what each needs besides REDIS_URL
ENTRY_POINTS: dict[str, list[str]] = {
    "worker": [*FIN_RELAY, "worker"],
    "celery-worker": CELERY_WORKER,
    "ingest": [*FIN_RELAY, "ingest", "--port", "0"],
    "ingest-2": [*FIN_RELAY, "ingest", "--port", "0", "--workers", "2"],
    "enqueue": [*FIN_RELAY, "enqueue", "start", "--conversation-id", "c", "--message", "hi"],
    "doctor": [*FIN_RELAY, "doctor", "--offline"],
}
GOOD = {"FIN_API_TOKEN": "tok-abc", "FIN_WEBHOOK_SECRETS": "whsec-abc-0123456789"}


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    base.pop("SENTRY_DSN", None)
    return subprocess.run(
        argv,
        env={**base, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cwd,
    )


def _refusal(result: subprocess.CompletedProcess[str], name: str) -> str:
    """The one line a refusing entry point printed (the doctor prints its report instead)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert PASSWORD not in output, output
    if name == "doctor":
        return output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout.strip() == "", result.stdout
    assert lines[0].startswith("fin-relay ") and "configuration error: " in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
@pytest.mark.parametrize(
    ("env", "named", "shown"),
    [
        (
            {"REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:notaport/0"},
            "REDIS_URL has an invalid port 'notaport'",
            "redis://:***@127.0.0.1:notaport/0",
        ),
        (
            {
                "REDIS_URL": "redis://127.0.0.1:1/0",
                "FIN_BROKER_URL": f"amqp://relay:{PASSWORD}@rabbit:5672x//",
            },
            "FIN_BROKER_URL has an invalid port '5672x'",
            "amqp://relay:***@rabbit:5672x//",
        ),
        ({"REDIS_URL": ""}, "REDIS_URL is required but empty", ""),
    ],
    ids=["redis-port", "broker-port", "redis-empty"],
)
def test_every_entry_point_refuses_with_one_line(
    tmp_path: Path, name: str, env: dict[str, str], named: str, shown: str
) -> None:
    result = _run(ENTRY_POINTS[name], {**GOOD, **env}, tmp_path)
    text = _refusal(result, name)
    assert named in text and shown in text, text


@pytest.mark.parametrize(
    ("name", "env", "named"),
    [
        ("worker", {"FIN_API_TOKEN": "  "}, "FIN_API_TOKEN is required but empty"),
        ("celery-worker", {"FIN_API_TOKEN": ""}, "FIN_API_TOKEN is required but empty"),
        ("ingest-2", {"FIN_WEBHOOK_SECRETS": " "}, "FIN_WEBHOOK_SECRETS is required but empty"),
        ("ingest", {"FIN_WEBHOOK_SECRETS": "a-secret,"}, "entry 2 of 2 is empty"),
        ("enqueue", {"FIN_API_VERSION": "2.0"}, "FIN_API_VERSION must be one of"),
        ("worker", {"SENTRY_DSN": f"https://{PASSWORD}@sentry.example.com/x"}, "SENTRY_DSN"),
    ],
)
def test_blank_secrets_and_bad_values_are_refused(
    tmp_path: Path, name: str, env: dict[str, str], named: str
) -> None:
    result = _run(
        ENTRY_POINTS[name], {"REDIS_URL": "redis://127.0.0.1:1/0", **GOOD, **env}, tmp_path
    )
    assert named in _refusal(result, name)


def test_a_line_names_every_wrong_variable(tmp_path: Path) -> None:
    result = _run(
        ENTRY_POINTS["worker"],
        {"REDIS_URL": f"redis://:{PASSWORD}@[::1/0", "FIN_API_TOKEN": "", "FIN_API_BASE_URL": "x"},
        tmp_path,
    )
    line = _refusal(result, "worker")
    for var in ("REDIS_URL", "FIN_API_TOKEN", "FIN_API_BASE_URL"):
        assert f"{var} " in line, line
    assert line.count("; ") == 2 and "more)" not in line


def test_empty_broker_url_and_sentry_dsn_mean_unset_in_a_running_ingest(
    redis_url: str, redis_client: Any, start_ingest: Any
) -> None:
    """``FIN_BROKER_URL=""`` (as compose passes an unset variable) is ``REDIS_URL``: the webhook
    is answered 202 and its job is on ``REDIS_URL``'s ``fin.events`` list; ``SENTRY_DSN=""`` is
    accepted as "no Sentry"."""
    server = start_ingest(redis_url, env={"FIN_BROKER_URL": "", "SENTRY_DSN": "  "}, workers=2)
    body = json.dumps(
        {
            "event_name": "fin_status_updated",
            "conversation_id": "c1",
            "user_id": "u1",
            "status": "complete",
            "created_at_ms": format_fin_time(datetime.now(UTC)),
        }
    ).encode()
    response = httpx.post(server.webhook_url, content=body, headers=webhook_headers(body))
    assert response.status_code == 202, response.text
    [event] = queued_events(redis_client)
    assert event["event"]["conversation_id"] == "c1"


def test_empty_broker_url_means_redis_url_for_the_producer_cli(
    redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    result = _run(
        [*ENTRY_POINTS["enqueue"], "--user-id", "u1"],
        {"REDIS_URL": redis_url, "FIN_BROKER_URL": "", "SENTRY_DSN": ""},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    [message] = redis_client.lrange("fin.calls", 0, -1)  # on REDIS_URL, not amqp://localhost
    assert json.loads(message)["headers"]["id"] == job_id

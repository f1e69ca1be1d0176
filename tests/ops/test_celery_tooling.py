"""Celery's own tooling on ``fin_relay.worker.app`` needs only the common settings: the app
takes its broker from ``FIN_BROKER_URL`` or ``REDIS_URL`` (not from the worker settings, which
need the Fin token), so ``celery -A fin_relay.worker.app inspect ping`` works with only
``REDIS_URL`` set, against a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
CELERY = [sys.executable, "-m", "celery", "-A", "fin_relay.worker.app"]


def _tool_env(**values: str) -> dict[str, str]:
    """A shell with nothing of fin-relay's but ``values`` (no token, no secrets)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    env.pop("SENTRY_DSN", None)
    return {**env, "PYTHONPATH": str(REPO), **values}


def test_the_app_takes_its_broker_from_the_common_settings(tmp_path: Path) -> None:
    """Without the Fin settings the app still has the broker, its visibility timeout (every
    client of a Redis broker must use the worker's) and fin-relay's queues and routes."""
    script = (
        "import json; from fin_relay.worker.app import app; c = app.conf; print(json.dumps("
        "[c.broker_url, c.broker_transport_options['visibility_timeout'], "
        "sorted(q.name for q in c.task_queues), c.task_routes['fin.start']['queue'], "
        "c.task_acks_late]))"
    )
    env = _tool_env(REDIS_URL="redis://127.0.0.1:1/3", FIN_RELAY_VISIBILITY_TIMEOUT_S="900")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        "redis://127.0.0.1:1/3",
        900.0,
        ["fin.calls", "fin.events"],
        "fin.calls",
        True,
    ]
    env["FIN_BROKER_URL"] = "  "  # empty: REDIS_URL (never Celery's amqp://guest@localhost)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert json.loads(out.stdout)[0] == "redis://127.0.0.1:1/3"


def test_inspect_ping_with_only_the_broker_configured(
    redis_url: str,
    fin_simulator: Any,
    celery_worker_proc: Any,
    test_broker_url: str | None,
    tmp_path: Path,
) -> None:
    sim = fin_simulator()
    worker = celery_worker_proc(base_url=sim.base_url, concurrency=2)
    env = _tool_env(REDIS_URL=redis_url)
    if test_broker_url is not None:  # the RabbitMQ run: the broker is not REDIS_URL
        env["FIN_BROKER_URL"] = test_broker_url
    ping = subprocess.run(
        [*CELERY, "inspect", "ping", "-d", worker.hostname, "--timeout", "10", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert json.loads(ping.stdout) == {worker.hostname: {"ok": "pong"}}
    assert "unconfigured.invalid" not in ping.stderr
    stats = subprocess.run(
        [*CELERY, "inspect", "active_queues", "-d", worker.hostname, "--timeout", "10", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert stats.returncode == 0, stats.stdout + stats.stderr
    queues = {q["name"] for q in json.loads(stats.stdout)[worker.hostname]}
    assert queues == {"fin.calls", "fin.events"}


def test_inspect_without_a_broker_fails_instead_of_guessing(tmp_path: Path) -> None:
    """No REDIS_URL: the tool cannot reach a broker (never a default one on localhost)."""
    ping = subprocess.run(
        [*CELERY, "inspect", "ping", "--timeout", "1"],
        env=_tool_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert ping.returncode != 0
    assert "unconfigured.invalid" in ping.stdout + ping.stderr

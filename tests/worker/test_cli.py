"""``fin-relay worker`` and ``celery -A fin_relay.worker.app``: fail fast, refuse bad settings."""

from __future__ import annotations

import os
import subprocess
import sys

from fin_relay.contract.settings import WorkerSettings
from fin_relay.worker.app import app, celery_config
from fin_relay.worker.startup import start_problems


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    return {**base, **extra}


def test_missing_token_fails_fast_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fin_relay.cli", "worker"],
        env=env(REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fin-relay worker: configuration error: FIN_API_TOKEN is required but not set"
    ]


def test_celery_entry_point_fails_fast_too() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "fin_relay.worker.app", "worker"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "configuration error: REDIS_URL is required" in proc.stderr


def test_refuses_visibility_timeout_below_countdowns() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fin_relay.cli", "worker"],
        env=env(
            REDIS_URL="redis://127.0.0.1:1/0",
            FIN_API_TOKEN="x",
            FIN_RELAY_VISIBILITY_TIMEOUT_S="60",
            FIN_RELAY_BACKOFF_MAX_S="30",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fin-relay worker: configuration error: FIN_RELAY_VISIBILITY_TIMEOUT_S (60) must exceed "
        "the longest countdown (FIN_RELAY_BACKOFF_MAX_S or FIN_RELAY_AUTH_PROBE_INTERVAL_S, "
        "30 s) plus FIN_RELAY_TASK_TIME_LIMIT_S (120 s), 150 s: the Redis broker would "
        "redeliver a job waiting for its countdown to a second worker"
    ]


def test_guarantees_checked_on_the_celery_config() -> None:
    settings = WorkerSettings(redis_url="redis://x:1/0", fin_api_token="t")
    conf = celery_config(settings)
    assert start_problems(settings, conf) == []
    assert conf["task_acks_late"] and conf["worker_prefetch_multiplier"] == 1
    broken = {**conf, "task_acks_late": False, "worker_prefetch_multiplier": 4}
    problems = start_problems(settings, broken)
    assert any("acks_late" in p for p in problems) and any("prefetch" in p for p in problems)


def test_the_app_does_not_import_the_cli() -> None:
    """The app (``celery -A fin_relay.worker.app``) needs nothing of ``fin-relay worker``."""
    code = (
        "import sys, fin_relay.worker.app; "
        "print('fin_relay.worker.cli' in sys.modules, 'fin_relay.worker.startup' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


def test_app_registers_every_task_on_its_queue() -> None:
    from fin_relay.contract.names import TASK_QUEUES

    for name, queue in TASK_QUEUES.items():
        assert name in app.tasks and app.tasks[name].queue == queue

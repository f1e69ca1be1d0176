"""One set of delivery-guarantee rules (``fin_relay.contract.guarantees``), one verdict: settings
validation, the worker's start-up refusal and ``fin-relay doctor`` agree on every configuration,
and the rule's longest countdown is the one the worker's retry code caps its countdowns at."""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time

import pytest

from fin_relay import doctor
from fin_relay.contract import guarantees
from fin_relay.contract.errors import ConfigurationError
from fin_relay.contract.settings import WorkerSettings, load

BASE = {"REDIS_URL": "redis://127.0.0.1:1/0", "FIN_API_TOKEN": "t"}
VT = "FIN_RELAY_VISIBILITY_TIMEOUT_S"

#: (id, environment on top of BASE, the variable the first problem names, or None: valid).
#: Defaults: visibility 3600, backoff max 30, auth probe 15, task limit 120, connect 5 + read 30.
CASES = [
    ("defaults", {}, None),
    # longest countdown 30 + task limit 120 = 150: just above is fine (the old doctor rule,
    # retry deadline 240 + backoff 30 = 270, refused it), at the bound is not
    ("visibility-just-above", {VT: "151"}, None),
    ("visibility-at-bound", {VT: "150"}, VT),
    # the auth probe is a countdown too (the old settings rule and doctor accepted these)
    ("auth-probe-too-long", {"FIN_RELAY_AUTH_PROBE_INTERVAL_S": "3500"}, VT),
    ("backoff-max-too-long", {"FIN_RELAY_BACKOFF_MAX_S": "3500"}, VT),
    ("task-limit-too-long", {"FIN_RELAY_TASK_TIME_LIMIT_S": "3580"}, VT),
    # the hold bound spans many messages: no term of the rule (the old doctor refused this)
    ("hold-longer-than-visibility", {"FIN_RELAY_SEQUENCE_HOLD_MAX_S": "7200"}, None),
    (
        "deadline-at-dedup-window",
        {"FIN_RELAY_RETRY_DEADLINE_S": "300"},
        "FIN_RELAY_RETRY_DEADLINE_S",
    ),
    ("task-limit-under-http", {"FIN_RELAY_TASK_TIME_LIMIT_S": "35"}, "FIN_RELAY_TASK_TIME_LIMIT_S"),
    # the short timings of the kill -9 integration test: 1 + 3.5 < 5, 1 + 2 < 3.5
    (
        "short-test-timings",
        {
            "FIN_RELAY_BACKOFF_MAX_S": "1",
            "FIN_RELAY_AUTH_PROBE_INTERVAL_S": "1",
            "FIN_RELAY_TASK_TIME_LIMIT_S": "3.5",
            "FIN_RELAY_CONNECT_TIMEOUT_S": "1",
            "FIN_RELAY_READ_TIMEOUT_S": "2",
            VT: "5",
        },
        None,
    ),
    # no visibility timeout on RabbitMQ: the rule does not apply (the old settings rule and
    # the old start-up check refused this, the old doctor accepted it)
    (
        "rabbitmq-short-visibility",
        {"FIN_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//", VT: "10"},
        None,
    ),
]


def _settings_verdict(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    for key, value in {**BASE, **env}.items():
        monkeypatch.setenv(key, value)
    try:
        load(WorkerSettings)
    except ConfigurationError as exc:
        return exc.problems
    return []


def _worker_verdict(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What a worker's start-up decides (``fin-relay worker`` and the app's ``celeryd_init``):
    the settings, then the start-up problems with the Celery configuration it would run."""
    from fin_relay.worker.app import celery_config
    from fin_relay.worker.startup import start_problems

    for key, value in {**BASE, **env}.items():
        monkeypatch.setenv(key, value)
    try:
        settings = load(WorkerSettings)
    except ConfigurationError as exc:
        return exc.problems
    return start_problems(settings, celery_config(settings))


def _doctor_verdict(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``fin-relay doctor --offline --json --only worker``: the worker's problems."""
    for key, value in {**BASE, **env}.items():
        monkeypatch.setenv(key, value)
    lines: list[str] = []
    args = argparse.Namespace(offline=True, json=True, only="worker")
    doctor.run(args, out=lines.append)
    return [
        c["detail"].removeprefix("a worker would refuse to start: ")
        for c in json.loads("\n".join(lines))
        if c["status"] == "problem" and c["name"].startswith(("config.worker", "worker."))
    ]


@pytest.mark.parametrize(("env", "names"), [(e, n) for _, e, n in CASES], ids=[c[0] for c in CASES])
def test_settings_worker_and_doctor_agree(
    env: dict[str, str], names: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings_verdict(env, monkeypatch)
    worker = _worker_verdict(env, monkeypatch)
    doctor_found = _doctor_verdict(env, monkeypatch)
    assert settings == worker == doctor_found
    if names is None:
        assert settings == []
    else:
        assert settings and settings[0].startswith(f"{names} ("), settings


def _cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fin_relay.cli", "worker"],
        env={"PATH": "/usr/bin:/bin", **BASE, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


BROKEN = [c for c in CASES if c[2] is not None]


@pytest.mark.parametrize(
    ("env", "names"), [(e, n) for _, e, n in BROKEN[:3]], ids=[c[0] for c in BROKEN[:3]]
)
def test_fin_relay_worker_refuses_what_the_settings_refuse(
    env: dict[str, str], names: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    problems = _settings_verdict(env, monkeypatch)
    proc = _cli(env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"fin-relay worker: configuration error: {'; '.join(problems)}"
    ]
    assert problems[0].startswith(f"{names} (")


@pytest.mark.integration
def test_fin_relay_worker_starts_where_only_the_old_doctor_rule_refused(redis_url: str) -> None:
    """Visibility 151 s > 30 s + 120 s: the worker starts and consumes (a real Redis)."""
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "FIN_API_TOKEN": "t", VT: "151"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fin_relay.cli", "worker", "-c", "1", "-n", "agree@test"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "fin-relay worker agree@test consuming" in line:
                break
        assert any("consuming" in line for line in seen), "".join(seen)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize(
    "env", [e for _, e, n in CASES if n is None], ids=[c[0] for c in CASES if c[2] is None]
)
def test_the_rule_uses_the_countdown_cap_of_the_retry_code(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fin_relay.worker.retries import longest_countdown_s, plan_retry

    for key, value in {**BASE, **env}.items():
        monkeypatch.setenv(key, value)
    settings = load(WorkerSettings)
    cap = guarantees.longest_countdown_s(settings)
    assert cap == longest_countdown_s(settings)
    assert guarantees.longest_unacked_s(settings) == cap + settings.fin_relay_task_time_limit_s
    rng = random.Random(7)
    for failures in range(1, 12):  # backoff and a far server hint: never past the cap
        for hint in (None, 1e9):
            plan = plan_retry(
                failures=failures,
                hint_s=hint,
                ambiguous_since_ms=None,
                now_ms=0,
                settings=settings.model_copy(update={"fin_relay_max_attempts": 100}),
                rng=rng,
            )
            assert plan.delay_s is not None and plan.delay_s <= cap

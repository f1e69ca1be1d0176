"""``fin-relay doctor`` on a good setup and on a broken one (allkeys-lru, wrong token)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fin_relay import doctor
from fin_relay.embedded_redis import EmbeddedRedis

SECRET = "a-long-enough-webhook-secret-123"


@pytest.fixture
def private_redis() -> Iterator[Callable[..., EmbeddedRedis]]:
    servers: list[EmbeddedRedis] = []

    def start(**kwargs: Any) -> EmbeddedRedis:
        server = EmbeddedRedis(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _run(**flags: Any) -> tuple[int, list[str]]:
    lines: list[str] = []
    args = argparse.Namespace(offline=False, json=False, only=None, **flags)
    code = doctor.run(args, out=lines.append)
    return code, lines


def test_good_setup_has_no_problems(
    monkeypatch: pytest.MonkeyPatch, fin_simulator: Any, private_redis: Any
) -> None:
    server = private_redis(appendonly=True)
    sim = fin_simulator()
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("FIN_API_TOKEN", sim.token)
    monkeypatch.setenv("FIN_API_BASE_URL", sim.base_url)
    monkeypatch.setenv("FIN_WEBHOOK_SECRETS", SECRET)
    code, lines = _run()
    text = "\n".join(lines)
    assert code == 0, text
    assert "PROBLEM" not in text and "no problems found" in text
    assert "ok      fin.token" in text and "ok      redis.eviction" in text
    # what a worker checks at start-up: the guarantees (fin_relay.contract.guarantees), kombu
    assert "ok      broker.visibility_timeout: 3600 s > the longest countdown plus" in text
    assert "ok      worker.guarantees: late acks on, prefetch 1, no result backend" in text
    assert "ok      worker.kombu: kombu 5.7." in text
    assert sim.token not in text and SECRET not in text  # secrets never printed


def test_broken_setup_names_each_problem_with_a_fix(
    monkeypatch: pytest.MonkeyPatch, fin_simulator: Any, private_redis: Any
) -> None:
    server = private_redis(maxmemory_policy="allkeys-lru")
    sim = fin_simulator()
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("FIN_API_TOKEN", "wrong-token")
    monkeypatch.setenv("FIN_API_BASE_URL", sim.base_url)
    code, lines = _run()
    text = "\n".join(lines)
    assert code == 2  # config.ingest (FIN_WEBHOOK_SECRETS) is a configuration problem
    problems = [line for line in lines if line.startswith("PROBLEM")]
    names = {line.split()[1].rstrip(":") for line in problems}
    assert {"redis.eviction", "redis.persistence", "fin.token", "config.ingest"} <= names, text
    for line in problems:  # every problem is followed by its fix
        assert lines[lines.index(line) + 1].strip().startswith("fix:"), line
    assert "allkeys-lru" in text


def test_doctor_cli_json_and_exit_code(tmp_path: Any) -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.run(
        [sys.executable, "-m", "fin_relay.cli", "doctor", "--json", "--offline"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2  # a configuration problem (FIN_API_TOKEN): 2, not 1
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert checks["redis"]["status"] == "problem" and "REDIS_URL" in checks["redis"]["fix"]
    assert checks["config.worker"]["status"] == "problem"
    assert "FIN_API_TOKEN" in checks["config.worker"]["detail"]


def _doctor(env: dict[str, str], *args: str, cwd: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fin_relay.cli", "doctor", "--offline", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_doctor_lists_every_configuration_problem_once_and_exits_2(tmp_path: Any) -> None:
    password = "doctor-pw-77"
    env = {
        "REDIS_URL": f"redis://:{password}@127.0.0.1:notaport/0",
        "FIN_API_TOKEN": "  ",
        "FIN_API_BASE_URL": "https://api.intercom.io:443x",
        "FIN_WEBHOOK_SECRETS": "one,",
        "FIN_RELAY_ENQUEUE_TIMEOUT_S": "-1",
    }
    proc = _doctor(env, "--json", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert password not in proc.stdout + proc.stderr
    problems = [c for c in json.loads(proc.stdout) if c["status"] == "problem"]
    details = [c["detail"] for c in problems]
    assert all(c["name"].startswith("config.") for c in problems), problems
    for expected in (
        "REDIS_URL has an invalid port 'notaport' (redis://:***@127.0.0.1:notaport/0)",
        "FIN_API_TOKEN is required but empty",
        "FIN_API_BASE_URL has an invalid port '443x'",
        "FIN_WEBHOOK_SECRETS entry 2 of 2 is empty",
        "FIN_RELAY_ENQUEUE_TIMEOUT_S",
    ):
        assert sum(expected in d for d in details) == 1, (expected, details)  # once each
    assert not any("more)" in d for d in details)
    for check in problems:  # each with its fix, naming the variable
        assert check["detail"].split()[0] in check["fix"], check


def test_doctor_reports_an_empty_broker_url_as_redis_url(redis_url: str, tmp_path: Any) -> None:
    env = {
        "REDIS_URL": redis_url,
        "FIN_BROKER_URL": "",
        "SENTRY_DSN": " ",
        "FIN_API_TOKEN": "t",
        "FIN_WEBHOOK_SECRETS": SECRET,
    }
    proc = _doctor(env, cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stdout  # no configuration problem
    assert "ok      config.common: configuration valid" in proc.stdout
    broker = [line for line in proc.stdout.splitlines() if " broker: " in line]
    assert broker == [f"ok      broker: {redis_url} (REDIS_URL: FIN_BROKER_URL is unset)"]


def test_doctor_checks_a_separate_broker_and_masks_its_password(
    redis_url: str, tmp_path: Any
) -> None:
    from fin_relay.embedded_redis import free_port

    env = {
        "REDIS_URL": redis_url,
        "FIN_BROKER_URL": f"amqp://relay:broker-pw-1@127.0.0.1:{free_port()}//",
        "FIN_API_TOKEN": "t",
        "FIN_WEBHOOK_SECRETS": SECRET,
    }
    proc = _doctor(env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout  # a problem, not a configuration one
    assert "broker-pw-1" not in proc.stdout + proc.stderr
    assert "PROBLEM broker: cannot reach the broker amqp://relay:***@127.0.0.1:" in proc.stdout

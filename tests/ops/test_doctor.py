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
    assert code == 1
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
    assert proc.returncode == 1
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert checks["redis"]["status"] == "problem" and "REDIS_URL" in checks["redis"]["fix"]
    assert checks["config.worker"]["status"] == "problem"
    assert "FIN_API_TOKEN" in checks["config.worker"]["detail"]

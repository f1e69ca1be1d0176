"""docker-compose.yml and Procfile: parsed, and every service's command line actually run.

No Docker engine runs on these machines (and ``docker compose config`` is not installed), so the
compose file is checked by parsing it and running each service's command with the environment
it declares, pointed at a private Redis on a free port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from fin_relay.embedded_redis import find_redis_server, free_port

REPO = Path(__file__).resolve().parents[2]
FIN_RELAY = [sys.executable, "-m", "fin_relay.cli"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _procfile() -> dict[str, str]:
    lines = (REPO / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def _wait(
    pred: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            f"{what} exited: {proc.stdout.read().decode()[-2000:] if proc.stdout else ''}"
        )
        try:
            if pred():
                return
        except (httpx.HTTPError, redis.RedisError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} not ready in {timeout_s}s")


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO
        )
        procs.append(proc)
        return proc

    yield _spawn
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _compose_env(
    compose: dict[str, Any], service: str, redis_url: str, **extra: str
) -> dict[str, str]:
    declared = compose["services"][service].get("environment", {})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    for key, value in declared.items():
        text = str(value)
        if text.startswith("${"):  # ${VAR:-default}
            inner = text[2:-1]
            text = inner.split(":-", 1)[1] if ":-" in inner else ""
        env[key] = text
    env["REDIS_URL"] = redis_url  # the compose host name "redis" -> our private server
    env.update(extra)
    return {k: v for k, v in env.items() if v != "" or not k.startswith(("FIN_", "SENTRY"))}


def _argv(command: list[str], port: int) -> list[str]:
    assert command[0] == "fin-relay", command
    args = [("127.0.0.1" if a == "0.0.0.0" else a) for a in command[1:]]
    if "--port" in args:
        args[args.index("--port") + 1] = str(port)
    return [*FIN_RELAY, *args]


def test_compose_redis_is_persistent_and_never_evicts(compose: dict[str, Any], spawn: Any) -> None:
    command = compose["services"]["redis"]["command"]
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    port = free_port()
    binary, _ = find_redis_server()
    proc = spawn(
        [
            binary,
            *command[1:],
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(Path(os.environ.get("TMPDIR", "/tmp"))),
        ],
        dict(os.environ),
    )
    client = redis.Redis(port=port, decode_responses=True)
    _wait(lambda: bool(client.ping()), proc, "compose redis")
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert client.config_get("appendonly")["appendonly"] == "yes"
    client.close()


def test_compose_services_have_healthchecks_and_scale(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "ingest", "worker", "simulator"} <= set(services)
    for name in ("redis", "ingest", "worker", "simulator"):
        assert "healthcheck" in services[name], name
    assert services["simulator"].get("profiles") == ["local"]
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N works


def test_compose_ingest_command_serves(compose: dict[str, Any], redis_url: str, spawn: Any) -> None:
    port = free_port()
    env = _compose_env(compose, "ingest", redis_url, FIN_WEBHOOK_SECRETS="compose-secret")
    proc = spawn(_argv(compose["services"]["ingest"]["command"], port), env)
    _wait(
        lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200,
        proc,
        "compose ingest",
    )


def _worker_ready(redis_url: str, pid: int) -> Callable[[], bool]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def ready() -> bool:
        for key in client.scan_iter("fin:worker:*"):
            raw = client.get(key)
            if raw and json.loads(raw).get("pid") == pid:
                return True
        return False

    return ready


def test_compose_worker_and_simulator_commands_run(
    compose: dict[str, Any], redis_url: str, spawn: Any
) -> None:
    sim_port = free_port()
    sim = spawn(_argv(compose["services"]["simulator"]["command"], sim_port), dict(os.environ))
    _wait(
        lambda: httpx.get(f"http://127.0.0.1:{sim_port}/_sim/health", timeout=1).is_success,
        sim,
        "compose simulator",
    )
    env = _compose_env(
        compose, "worker", redis_url, FIN_API_BASE_URL=f"http://127.0.0.1:{sim_port}"
    )
    worker = spawn(_argv(compose["services"]["worker"]["command"], 0), env)
    _wait(_worker_ready(redis_url, worker.pid), worker, "compose worker", 60)


def test_procfile_commands_run(redis_url: str, spawn: Any) -> None:
    procfile = _procfile()
    assert set(procfile) == {"web", "worker"}
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    path = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    env = dict(
        base,
        REDIS_URL=redis_url,
        FIN_WEBHOOK_SECRETS="procfile-secret",
        FIN_API_TOKEN="t",
        PORT=str(port),
        PATH=path,
    )
    # run each line through a shell, as Heroku/honcho/foreman do (variable expansion included)
    web = spawn(["sh", "-c", f"exec {procfile['web']}"], env)
    _wait(
        lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200,
        web,
        "Procfile web",
    )
    worker = spawn(["sh", "-c", f"exec {procfile['worker']}"], env)
    _wait(_worker_ready(redis_url, worker.pid), worker, "Procfile worker", 60)

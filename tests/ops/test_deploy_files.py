"""docker-compose.yml, Procfile, requirements.txt, Dockerfile and .dockerignore: parsed, and
every service's command line actually run.

No Docker engine runs on these machines, so the compose file is checked by parsing it, resolving
its ``${VAR:-default}`` / ``${VAR:?error}`` interpolation as Compose does (cross-checked against
``docker compose config`` / ``docker-compose config`` where one is installed), and running each
service's command with exactly the environment Compose would give its container, with the
compose host names (``redis``, ``simulator``, ``ingest-local``) pointed at private servers on
free ports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
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


class ComposeInterpolationError(ValueError):
    """``${VAR:?message}`` with VAR unset or empty: Compose refuses the whole file."""


_INTERPOLATION = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_]\w*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


def interpolate(text: str, host_env: Mapping[str, str]) -> str:
    """``text`` with Compose's interpolation applied, from the environment ``docker compose``
    runs in: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("plain"):
            return host_env.get(match.group("plain"), "")
        braced = _BRACED.fullmatch(match.group("braced"))
        assert braced, f"bad interpolation {match.group(0)!r}"
        name, op, arg = braced.group("name"), braced.group("op"), braced.group("arg") or ""
        value = host_env.get(name)
        if op is None:
            return value or ""
        # ":-", ":?", ":+" treat an empty variable as unset; "-", "?", "+" only an unset one
        present = bool(value) if op.startswith(":") else value is not None
        if op.endswith("-"):
            return value if present and value is not None else arg
        if op.endswith("?"):
            if not present or value is None:
                raise ComposeInterpolationError(f"{name}: {arg}")
            return value
        return arg if present else ""  # "+" / ":+"

    return _INTERPOLATION.sub(substitute, text)


def compose_environment(
    compose: dict[str, Any], service: str, host_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment Compose gives ``service``'s container, empty values included (an unset
    ``${FIN_BROKER_URL:-}`` is passed as ``FIN_BROKER_URL=""``)."""
    declared = compose["services"][service].get("environment", {})
    if isinstance(declared, list):  # ["KEY=value", ...]
        declared = dict(item.split("=", 1) if "=" in item else (item, "") for item in declared)
    host = dict(host_env or {})
    return {key: interpolate(str(value), host) for key, value in declared.items()}


def _retarget(text: str, hosts: Mapping[str, str]) -> str:
    """Compose host names (``redis:6379``) -> this machine's servers (``127.0.0.1:PORT``)."""
    for compose_host, local in hosts.items():
        text = text.replace(f"//{compose_host}", f"//{local}").replace(
            f"@{compose_host}", f"@{local}"
        )
    return text


def _process_env(
    compose: dict[str, Any],
    service: str,
    hosts: Mapping[str, str],
    host_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """This machine's environment without FIN_*/REDIS_URL/SENTRY_DSN, plus exactly what Compose
    gives the container (its host names retargeted)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL", "SENTRY"))}
    for key, value in compose_environment(compose, service, host_env).items():
        env[key] = _retarget(value, hosts)
    return env


def _redis_host(redis_url: str) -> dict[str, str]:
    return {"redis:6379": redis_url.split("://", 1)[1].split("/", 1)[0]}


def _compose_env(
    compose: dict[str, Any],
    service: str,
    redis_url: str,
    host_env: Mapping[str, str] | None = None,
    **hosts: str,
) -> dict[str, str]:
    return _process_env(compose, service, {**_redis_host(redis_url), **hosts}, host_env)


def _argv(command: list[str], port: int, hosts: Mapping[str, str] | None = None) -> list[str]:
    assert command[0] == "fin-relay", command
    args = [_retarget("127.0.0.1" if a == "0.0.0.0" else a, hosts or {}) for a in command[1:]]
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


def test_compose_interpolation_is_resolved_as_compose_does() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d}|${EMPTY:-d}|${UNSET:-d}", env) == "v|d|d"
    assert interpolate("${SET-d}|${EMPTY-d}|${UNSET-d}", env) == "v||d"
    assert interpolate("${SET:+a}|${EMPTY:+a}|${EMPTY+a}|${UNSET+a}", env) == "a||a|"
    assert interpolate("$SET ${SET} $$HOSTNAME ${UNSET}", env) == "v v $HOSTNAME "
    assert interpolate("${SET:?need it}", env) == "v"
    with pytest.raises(ComposeInterpolationError, match="EMPTY: need it"):
        interpolate("${EMPTY:?need it}", env)
    assert interpolate("${EMPTY?need it}", env) == ""
    with pytest.raises(ComposeInterpolationError):
        interpolate("${UNSET?need it}", env)


def _compose_binary() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.parametrize(
    "host_env",
    [{}, {"FIN_API_TOKEN": "t", "FIN_WEBHOOK_SECRETS": "s", "FIN_BROKER_URL": "amqp://r//"}],
    ids=["no-secrets", "secrets"],
)
def test_the_resolver_agrees_with_docker_compose_config(
    compose: dict[str, Any], host_env: dict[str, str], tmp_path: Path
) -> None:
    """Where a Compose binary is installed, ``config`` (which needs no Docker engine) renders
    every service's environment as :func:`compose_environment` does."""
    binary = _compose_binary()
    if binary is None:
        pytest.skip("neither 'docker compose' nor 'docker-compose' is installed")
    shutil.copyfile(REPO / "docker-compose.yml", tmp_path / "docker-compose.yml")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **host_env}
    rendered = subprocess.run(
        [*binary, "--profile", "local", "config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    services = yaml.safe_load(rendered.stdout)["services"]
    assert set(services) == set(compose["services"])
    for name, service in services.items():
        theirs = {k: "" if v is None else str(v) for k, v in service.get("environment", {}).items()}
        assert theirs == compose_environment(compose, name, host_env), name


PRODUCTION = ("ingest", "worker")
LOCAL = {"ingest-local": "ingest", "worker-local": "worker"}


def test_compose_defaults_no_secret_and_the_local_profile_points_at_the_simulator(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in PRODUCTION:  # a shell without the secrets gives the containers none
        env = compose_environment(compose, name, {})
        assert env["FIN_API_TOKEN"] == "" and env["FIN_WEBHOOK_SECRETS"] == "", name
        assert env["FIN_API_BASE_URL"] == "https://api.intercom.io"
        assert env["FIN_BROKER_URL"] == "" and env["SENTRY_DSN"] == ""  # empty = unset
        assert "profiles" not in services[name]  # `docker compose up -d` starts them
    simulator = services["simulator"]["command"]
    token = simulator[simulator.index("--token") + 1]
    secret = simulator[simulator.index("--secret") + 1]
    callback = simulator[simulator.index("--callback-url") + 1]
    for name, role in LOCAL.items():
        service = services[name]
        assert service.get("profiles") == ["local"] and "healthcheck" in service
        assert service["command"] == services[role]["command"]
        # even with a real token in the shell, the local services use the simulator's
        env = compose_environment(
            compose, name, {"FIN_API_TOKEN": "real", "FIN_WEBHOOK_SECRETS": "real"}
        )
        assert env["FIN_API_BASE_URL"] == "http://simulator:8080"
        assert (env["FIN_API_TOKEN"], env["FIN_WEBHOOK_SECRETS"]) == (token, secret)
        # a Redis database of their own: never the production services' queues
        assert env["REDIS_URL"] == "redis://redis:6379/1" and env["FIN_BROKER_URL"] == ""
    assert callback.startswith("http://ingest-local:8000/")
    assert services["ingest-local"]["ports"] != services["ingest"]["ports"]
    assert compose_environment(compose, "ingest", {})["REDIS_URL"] == "redis://redis:6379/0"


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        ("ingest", ["FIN_WEBHOOK_SECRETS"]),
        ("worker", ["FIN_API_TOKEN"]),
        ("doctor", ["FIN_API_TOKEN", "FIN_WEBHOOK_SECRETS"]),
    ],
)
def test_compose_services_refuse_to_start_without_secrets(
    compose: dict[str, Any], redis_url: str, argv: str, missing: list[str]
) -> None:
    """Exactly Compose's environment from a shell without the secrets: one line naming the
    variable, exit 2 (``doctor --offline`` in the worker's container lists both)."""
    service = "ingest" if argv == "ingest" else "worker"
    env = _compose_env(compose, service, redis_url)
    if argv == "doctor":
        command = [*FIN_RELAY, "doctor", "--offline"]
    else:
        command = _argv(compose["services"][service]["command"], free_port())
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90, cwd=REPO)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    if argv == "doctor":
        problems = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM")]
        for var in missing:
            assert any(f"{var} is required but empty" in line for line in problems), problems
        assert "REDIS_URL" in result.stdout and "FIN_BROKER_URL is unset" in result.stdout
        return
    [line] = result.stderr.strip().splitlines()
    assert line == f"fin-relay {argv}: configuration error: {missing[0]} is required but empty " + (
        "(empty means unset)"
    )


def test_compose_ingest_command_serves(compose: dict[str, Any], redis_url: str, spawn: Any) -> None:
    port = free_port()
    env = _compose_env(compose, "ingest", redis_url, {"FIN_WEBHOOK_SECRETS": "compose-secret"})
    assert env["FIN_BROKER_URL"] == "" and env["SENTRY_DSN"] == ""  # given to it empty
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
    host_env = {"FIN_API_TOKEN": "sim-token", "FIN_API_BASE_URL": f"http://127.0.0.1:{sim_port}"}
    env = _compose_env(compose, "worker", redis_url, host_env)
    assert env["FIN_BROKER_URL"] == ""  # empty: the broker is REDIS_URL (it consumes there)
    worker = spawn(_argv(compose["services"]["worker"]["command"], 0), env)
    _wait(_worker_ready(redis_url, worker.pid), worker, "compose worker", 60)


def test_compose_local_profile_runs_end_to_end_without_any_variable(
    compose: dict[str, Any], redis_url: str, spawn: Any, tmp_path: Path
) -> None:
    """``docker compose --profile local up`` from a shell with no FIN_* variable: the simulator,
    ingest-local and worker-local with exactly Compose's environment. A job goes to the
    simulator with the local token and succeeds; the simulator's signed webhooks pass the
    local ingest and the local worker publishes them: every secret matches."""
    sim_port, ingest_port = free_port(), free_port()
    hosts = {
        **_redis_host(redis_url),
        "simulator:8080": f"127.0.0.1:{sim_port}",
        "ingest-local:8000": f"127.0.0.1:{ingest_port}",
    }
    services = compose["services"]
    sim = spawn(_argv(services["simulator"]["command"], sim_port, hosts), dict(os.environ))
    _wait(
        lambda: httpx.get(f"http://127.0.0.1:{sim_port}/_sim/health", timeout=1).is_success,
        sim,
        "compose simulator",
    )
    ingest_env = _process_env(compose, "ingest-local", hosts)
    ingest = spawn(_argv(services["ingest-local"]["command"], ingest_port, hosts), ingest_env)
    _wait(
        lambda: httpx.get(f"http://127.0.0.1:{ingest_port}/readyz", timeout=1).is_success,
        ingest,
        "compose ingest-local",
    )
    worker_env = _process_env(compose, "worker-local", hosts)
    local_redis = worker_env["REDIS_URL"]
    assert local_redis.endswith("/1") and local_redis != redis_url
    worker = spawn(_argv(services["worker-local"]["command"], 0, hosts), worker_env)
    _wait(_worker_ready(local_redis, worker.pid), worker, "compose worker-local", 60)
    enqueue = subprocess.run(
        [*FIN_RELAY, "enqueue", "start", "--conversation-id", "compose-local-1",
         "--user-id", "u1", "--message", "hello", "--wait", "--timeout-s", "60"],
        env=worker_env, capture_output=True, text=True, timeout=90, cwd=tmp_path,
    )  # fmt: skip
    assert enqueue.returncode == 0, enqueue.stdout + enqueue.stderr
    assert '"call.succeeded"' in enqueue.stdout, enqueue.stdout
    client = redis.Redis.from_url(local_redis, decode_responses=True)
    try:

        def event_published() -> bool:
            entries = client.xrange("fin:events")
            return any("compose-local-1" in json.dumps(fields) for _id, fields in entries)

        _wait(event_published, worker, "a simulator webhook published by worker-local", 60)
    finally:
        client.close()
    assert redis.Redis.from_url(redis_url).llen("fin.calls") == 0  # db 0 untouched


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


# --- .dockerignore and the Dockerfile's COPY lines ------------------------------------------


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: from the context root, ``*`` and ``?`` within
    one path element, ``**`` across any number of them."""
    pattern = os.path.normpath(pattern.strip("/"))
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _excluded(path: str, patterns: list[str]) -> bool:
    """Is ``path`` (relative to the context root) left out of the build context? A path whose
    folder is excluded is excluded; the last matching pattern wins (``!`` re-includes)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern_regex(raw.removeprefix("!"))
        if any(regex.fullmatch(c) for c in candidates):
            result = not negate
    return result


def _build_context(patterns: list[str]) -> list[str]:
    """Every file and symlink of the checkout that ``docker build .`` would send."""
    found = []
    for root, dirs, files in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        for name in [*files, *(d for d in dirs if os.path.islink(os.path.join(root, d)))]:
            rel = os.path.normpath(os.path.join(rel_root, name))
            if not _excluded(rel, patterns):
                found.append(rel)
        dirs[:] = [
            d
            for d in dirs
            if not os.path.islink(os.path.join(root, d))
            and not _excluded(os.path.normpath(os.path.join(rel_root, d)), patterns)
        ]
    return found


def _dockerfile_copies() -> list[tuple[list[str], str]]:
    copies = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0] == "COPY":
            assert not any(w.startswith("--") for w in words[1:]), line  # plain COPY only
            copies.append((words[1:-1], words[-1]))
    return copies


def _is_cache(path: str) -> bool:
    return "__pycache__" in path.split("/") or path.endswith(".pyc") or ".egg-info" in path


def test_dockerignore_keeps_caches_venvs_and_secrets_out() -> None:
    patterns = _dockerignore()
    required = [".git", ".venv", "__pycache__", "*.pyc", ".fin-relay/", ".hypothesis/",
                ".pytest_cache/", ".mypy_cache/", ".ruff_cache/", "build/", "dist/",
                "*.egg-info"]  # fmt: skip
    assert set(required) <= set(patterns), set(required) - set(patterns)
    for path in (".git/HEAD", ".venv/bin/python", ".env", ".fin-relay/logs/worker.log",
                 "fin_relay/__pycache__/cli.cpython-311.pyc", "worker/__pycache__/tasks.pyc",
                 "tests/ops/__pycache__/x.pyc", "fin_relay.egg-info/PKG-INFO", ".mypy_cache/x",
                 ".hypothesis/examples/x", "build/lib/x.py", "dist/fin_relay-0.1.0.whl"):  # fmt: skip
        assert _excluded(path, patterns), path
    for path in ("pyproject.toml", "README.md", "constraints.txt", "fin_relay/cli.py",
                 "worker/tasks.py", "producer/enqueue.lua", "simulator/schemas"):  # fmt: skip
        assert not _excluded(path, patterns), path


def test_dockerfile_copies_everything_the_package_needs(tmp_path: Path) -> None:
    """Apply the Dockerfile's COPY lines to the build context .dockerignore leaves: every file
    the checkout has under those sources (caches aside) is in the image, with every folder
    pyproject.toml's package-dir maps into fin_relay."""
    context = set(_build_context(_dockerignore()))
    image = tmp_path / "app"
    image.mkdir()
    copied_sources: list[str] = []
    for sources, dest in _dockerfile_copies():
        for source in sources:
            source = os.path.normpath(source)
            inside = [p for p in context if p == source or p.startswith(source + "/")]
            assert inside, f"COPY {source}: not in the build context"
            copied_sources.append(source)
            for rel in inside:
                if dest.endswith("/"):
                    target = image / dest.removeprefix("./") / rel
                else:
                    target = image / dest.removeprefix("./") / os.path.relpath(rel, source)
                target.parent.mkdir(parents=True, exist_ok=True)
                origin = REPO / rel
                if origin.is_symlink():
                    target.symlink_to(os.readlink(origin))
                else:
                    shutil.copyfile(origin, target)
    for source in copied_sources:  # nothing the checkout has there was left out
        origin = REPO / source
        if origin.is_file():
            continue
        for root, _dirs, files in os.walk(origin):
            for name in files:
                rel = os.path.relpath(os.path.join(root, name), REPO)
                if not _is_cache(rel):
                    assert rel in context, f"{rel} is excluded from the build context"
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    for folder in package_dir.values():  # the folders setuptools maps into fin_relay
        assert (image / folder / "__init__.py").is_file(), f"{folder} is not in the image"
    assert (image / "pyproject.toml").is_file() and (image / "README.md").is_file()
    assert list(image.rglob("*.lua")) and list((image / "simulator/schemas").iterdir())
    assert not [p for p in image.rglob("*") if _is_cache(str(p.relative_to(image)))]


# --- requirements.txt for Python buildpacks (Procfile) -------------------------------------


def _requirements() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.split(" #")[0].strip() for line in lines if line.strip() and line[0] != "#"]


def test_procfile_runs_what_requirements_txt_installs() -> None:
    assert _requirements() == ["-c constraints.txt", "."]  # the project, pinned
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts = set(pyproject["project"]["scripts"])
    for kind, command in _procfile().items():
        assert shlex.split(command)[0] in scripts, (kind, command)


def test_requirements_txt_resolves_to_the_project_with_the_pinned_versions(
    tmp_path: Path,
) -> None:
    """``pip install -r requirements.txt`` as a buildpack runs it, from a clean copy of the
    checkout (dry run, every dependency resolved as on an empty machine)."""
    app = tmp_path / "app"
    for rel in _build_context(_dockerignore()):
        target = app / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / rel).is_symlink():
            target.symlink_to(os.readlink(REPO / rel))
        else:
            shutil.copyfile(REPO / rel, target)
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "PIP_REQUIRE_VIRTUALENV"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "-q",
            "--report",
            str(report),
            "-r",
            "requirements.txt",
        ],  # fmt: skip
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if run.returncode != 0 and not os.environ.get("CI") and "connection" in run.stderr.lower():
        pytest.skip(f"no package index reachable: {run.stderr.strip()[-300:]}")
    assert run.returncode == 0, run.stderr[-3000:]
    planned = {
        item["metadata"]["name"].lower().replace("_", "-"): item
        for item in json.loads(report.read_text())["install"]
    }
    project = planned["fin-relay"]
    assert project["download_info"]["url"] == app.as_uri()
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    dependencies = [name for name in planned if name != "fin-relay"]
    assert {"celery", "redis", "httpx", "uvicorn", "pydantic"} <= set(dependencies)
    for name in dependencies:
        if name in pins:
            assert planned[name]["metadata"]["version"] == pins[name], name
    pinned = [name for name in dependencies if name in pins]
    assert len(pinned) >= len(dependencies) - 2, set(dependencies) - set(pins)

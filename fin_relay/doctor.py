"""``fin-relay doctor``: check a deployment and say how to fix each problem.

Checks configuration (the delivery-guarantee rules of ``fin_relay.contract.guarantees``
included: the same the settings and a worker's start-up apply), Redis (reachability,
persistence, eviction policy), the worker's Celery configuration and kombu version (what a
worker would refuse to start with), the Fin base URL and token (with one harmless request:
``POST /fin/reply`` with an empty body, which Fin answers 401 for a bad token and 400 for a
good one, creating nothing), and the webhook secrets. Every configuration
problem is listed, one line each (a variable wrong for several components once). Exit code 2
when the configuration has a problem (what would stop ``fin-relay worker``/``ingest``/
``enqueue`` at start-up), 1 when another problem is found, 0 when none is.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from fin_relay.contract import guarantees
from fin_relay.contract.errors import ConfigurationError
from fin_relay.contract.settings import (
    CommonSettings,
    IngestSettings,
    ProducerSettings,
    WorkerSettings,
    load,
    redact_url,
)

OK, WARN, PROBLEM = "ok", "warn", "problem"
EXIT_OK, EXIT_PROBLEM, EXIT_CONFIGURATION = 0, 1, 2


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    #: configuration problems already reported (a bad REDIS_URL is every component's: once)
    seen_config_problems: set[str] = field(default_factory=set)

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix))

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status == PROBLEM]


def _config_fix(problem: str) -> str:
    var = problem.split(" ", 1)[0]
    named = set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", problem))
    if not var.isupper() or len(named) > 1:  # a rule across variables: its message names them
        return "change the variables it names (environment or .env)"
    if " is required but " in problem:
        return f"set {var} in the environment or .env (an empty value counts as unset)"
    return f"correct {var} in the environment or .env"


def _load(cls: type[Any], report: Report, name: str) -> Any:
    """Load one component's settings; report each of its configuration problems not
    reported yet (as ``name``: PROBLEM, with its fix)."""
    try:
        settings = load(cls)
    except ConfigurationError as exc:
        new = [p for p in exc.problems if p not in report.seen_config_problems]
        report.seen_config_problems.update(exc.problems)
        for problem in new:
            report.add(name, PROBLEM, problem, _config_fix(problem))
        if not new:
            report.add(name, WARN, "not checked further: fix the configuration problems above")
        return None
    report.add(name, OK, "configuration valid")
    return settings


def check_broker(settings: CommonSettings, report: Report) -> None:
    """Which broker Celery uses (its password masked); when it is not ``REDIS_URL``, whether
    it answers."""
    shown = redact_url(settings.broker_url)
    if settings.fin_broker_url is None:
        report.add("broker", OK, f"{shown} (REDIS_URL: FIN_BROKER_URL is unset)")
        return
    from kombu import Connection  # type: ignore[attr-defined]

    timeout = settings.fin_relay_redis_timeout_s
    connection = Connection(settings.broker_url, connect_timeout=timeout)  # type: ignore[no-untyped-call]
    try:
        connection.ensure_connection(max_retries=1, timeout=timeout)  # type: ignore[no-untyped-call]
    except Exception as exc:  # any failure to connect is the finding
        report.add(
            "broker",
            PROBLEM,
            f"cannot reach the broker {shown} (FIN_BROKER_URL): {type(exc).__name__}",
            "start the broker or fix FIN_BROKER_URL (leave it empty to use REDIS_URL)",
        )
        return
    finally:
        connection.release()  # type: ignore[no-untyped-call]
    report.add("broker", OK, f"{shown} (FIN_BROKER_URL) reachable")


def check_redis(settings: CommonSettings, report: Report) -> redis.Redis | None:
    client: redis.Redis = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.fin_relay_redis_timeout_s,
        socket_connect_timeout=settings.fin_relay_redis_timeout_s,
        decode_responses=True,
    )
    try:
        info = client.info()
    except redis.RedisError as exc:
        report.add(
            "redis",
            PROBLEM,
            f"cannot reach Redis: {type(exc).__name__}",
            "start Redis or fix REDIS_URL (redis://host:port/db, rediss:// for TLS)",
        )
        return None
    report.add("redis", OK, f"Redis {info.get('redis_version')} reachable")
    try:
        config = client.config_get("maxmemory-policy")
        policy = config.get("maxmemory-policy", "?")
        aof = client.config_get("appendonly").get("appendonly", "no")
        save = client.config_get("save").get("save", "")
    except redis.ResponseError:
        report.add(
            "redis.config",
            WARN,
            "CONFIG GET is disabled (managed Redis?): cannot check",
            "make sure maxmemory-policy is noeviction and persistence (AOF) is on",
        )
        return client
    if policy != "noeviction":
        report.add(
            "redis.eviction",
            PROBLEM,
            f"maxmemory-policy is {policy}: Redis may silently drop queued jobs and state",
            "set maxmemory-policy noeviction (redis.conf or CONFIG SET)",
        )
    else:
        report.add("redis.eviction", OK, "maxmemory-policy noeviction")
    if aof != "yes" and not save:
        report.add(
            "redis.persistence",
            PROBLEM,
            "no persistence (appendonly no, no RDB save): a restart loses every queued job",
            "set appendonly yes (appendfsync everysec or always)",
        )
    elif aof != "yes":
        report.add(
            "redis.persistence",
            WARN,
            "RDB snapshots only: a crash loses recent jobs",
            "set appendonly yes",
        )
    else:
        report.add("redis.persistence", OK, "AOF on")
    return client


def check_worker(settings: WorkerSettings, report: Report) -> None:
    """What a worker started now with these settings would refuse at start-up, beyond the
    settings themselves (``fin_relay.worker.startup.start_problems``): its Celery
    configuration against the delivery guarantees (``fin_relay.contract.guarantees``, whose
    rules across variables ``WorkerSettings`` already enforced to load) and the installed
    kombu against its Redis transport's verified versions."""
    from fin_relay.worker import startup, transport
    from fin_relay.worker.app import celery_config

    vt = settings.fin_relay_visibility_timeout_s
    report.add(
        "broker.visibility_timeout",
        OK,
        f"{vt:g} s > the longest countdown plus the task time limit "
        f"({guarantees.longest_unacked_s(settings):g} s)"
        if settings.broker_is_redis
        else "broker is not Redis: no visibility-timeout redelivery",
    )
    # what a worker started now with these settings would load (no Celery app needed)
    conf = celery_config(settings)
    found = guarantees.problems(settings, conf)
    for problem in found:
        report.add(
            "worker.guarantees",
            PROBLEM,
            problem,
            "keep fin-relay's Celery configuration (fin_relay.worker.app.celery_config)",
        )
    if not found:
        report.add(
            "worker.guarantees",
            OK,
            f"late acks on, prefetch {conf['worker_prefetch_multiplier']}, no result backend",
        )
    kombu = startup.kombu_problem(settings)
    if kombu is not None:
        report.add(
            "worker.kombu",
            PROBLEM,
            f"a worker would refuse to start: {kombu}",
            f"pip install 'kombu{startup.kombu_range()}' (or use a RabbitMQ broker)",
        )
    elif startup.uses_fin_relay_transport(settings):
        report.add("worker.kombu", OK, f"kombu {transport.kombu_version()} (verified)")


def check_fin(settings: WorkerSettings, report: Report, *, offline: bool) -> None:
    if offline:
        report.add("fin", WARN, "skipped (--offline)", "")
        return
    url = f"{settings.fin_api_base_url}/fin/reply"
    headers = {
        "Authorization": f"Bearer {settings.fin_api_token.get_secret_value()}",
        "Intercom-Version": settings.fin_api_version,
        "Accept": "application/json",
    }
    try:
        resp = httpx.post(url, json={}, headers=headers, timeout=5.0)
    except httpx.HTTPError as exc:
        report.add(
            "fin.reachable",
            PROBLEM,
            f"cannot reach {settings.fin_api_base_url}: {type(exc).__name__}",
            "check FIN_API_BASE_URL and outbound network access",
        )
        return
    report.add("fin.reachable", OK, f"{settings.fin_api_base_url} answered {resp.status_code}")
    if resp.status_code == 400 and "intercom_version_invalid" in resp.text:
        report.add(
            "fin.version",
            PROBLEM,
            f"Intercom-Version {settings.fin_api_version} rejected",
            "set FIN_API_VERSION to 2.14 or later (or Preview)",
        )
    elif resp.status_code == 401:
        report.add(
            "fin.token",
            PROBLEM,
            "Fin rejected the token (401)",
            "generate a new Fin Agent API key (it is regenerated when scopes change) "
            "and set FIN_API_TOKEN",
        )
    elif resp.status_code in (400, 422):
        report.add(
            "fin.token",
            OK,
            "token accepted (harmless empty /fin/reply answered "
            f"{resp.status_code}; nothing was created)",
        )
    else:
        report.add("fin.token", WARN, f"unexpected answer {resp.status_code}", "")


def check_secrets(settings: IngestSettings, report: Report) -> None:
    secrets = settings.webhook_secrets
    short = [s for s in secrets if len(s) < 16]
    if short:
        report.add(
            "ingest.secrets",
            WARN,
            f"{len(short)} of {len(secrets)} secrets are shorter than 16 characters",
            "use the signing secret from Fin's settings page",
        )
    else:
        report.add("ingest.secrets", OK, f"{len(secrets)} webhook secret(s) configured")


def diagnose(*, offline: bool = False) -> Report:
    report = Report()
    common = _load(CommonSettings, report, "config.common")
    if common is not None:
        check_redis(common, report)
        check_broker(common, report)
    worker = _load(WorkerSettings, report, "config.worker")
    if worker is not None:
        check_worker(worker, report)
        check_fin(worker, report, offline=offline)
    ingest = _load(IngestSettings, report, "config.ingest")
    if ingest is not None:
        check_secrets(ingest, report)
    _load(ProducerSettings, report, "config.producer")
    return report


#: Checks that concern one component only (``--only`` leaves out the others').
_COMPONENT_CHECKS = {
    "worker": ("config.worker", "worker.", "fin", "broker."),
    "ingest": ("config.ingest", "ingest."),
    "producer": ("config.producer",),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--offline", action="store_true", help="do not call Fin")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--only",
        choices=list(_COMPONENT_CHECKS),
        help="check one component's needs only (the others' config is skipped)",
    )


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """Print the report; exit 2 for a configuration problem, 1 for another problem."""
    report = diagnose(offline=args.offline)
    checks = report.checks
    if args.only is not None:
        others = tuple(
            prefix
            for component, prefixes in _COMPONENT_CHECKS.items()
            if component != args.only
            for prefix in prefixes
        )
        checks = [c for c in checks if not c.name.startswith(others)]
    if args.json:
        out(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        marks = {OK: "ok     ", WARN: "warn   ", PROBLEM: "PROBLEM"}
        for c in checks:
            out(f"{marks[c.status]} {c.name}: {c.detail}")
            if c.status != OK and c.fix:
                out(f"        fix: {c.fix}")
    problems = [c for c in checks if c.status == PROBLEM]
    if not args.json:
        out(f"{len(problems)} problem(s) found" if problems else "no problems found")
    sys.stdout.flush()
    if any(c.name.startswith("config.") for c in problems):
        return EXIT_CONFIGURATION
    return EXIT_PROBLEM if problems else EXIT_OK

"""One rule for every setting, enforced by the settings classes themselves: an empty or
whitespace-only value means unset; every URL is parsed whole at load (scheme, host, port, Redis
database) and shown with its password masked; every required secret is non-empty; every
problem is named on one line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from fin_relay.contract.errors import ConfigurationError
from fin_relay.contract.settings import (
    CommonSettings,
    IngestSettings,
    ProducerSettings,
    WorkerSettings,
    load,
    redact_url,
)

CLASSES: tuple[type[BaseSettings], ...] = (
    CommonSettings,
    WorkerSettings,
    IngestSettings,
    ProducerSettings,
)
BASE = {
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "FIN_API_TOKEN": "tok-abc",
    "FIN_WEBHOOK_SECRETS": "whsec-abc",
}
PASSWORD = "hunter2-s3cret"


def _env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def _error(cls: type[BaseSettings]) -> str:
    with pytest.raises(ConfigurationError) as info:
        load(cls)
    line = str(info.value)
    assert "\n" not in line and line.startswith("configuration error: ")
    return line


def _every_field() -> list[tuple[type[BaseSettings], str]]:
    return [(cls, name.upper()) for cls in CLASSES for name in cls.model_fields]


@pytest.mark.parametrize("blank", ["", " \t \n"], ids=["empty", "whitespace"])
@pytest.mark.parametrize(
    ("cls", "var"), _every_field(), ids=[f"{c.__name__}.{v}" for c, v in _every_field()]
)
def test_a_blank_value_means_unset_for_every_setting(
    monkeypatch: pytest.MonkeyPatch, cls: type[BaseSettings], var: str, blank: str
) -> None:
    """Setting any variable to a blank value loads exactly what leaving it unset loads (or
    fails naming it as missing when it is required)."""
    _env(monkeypatch, BASE)
    monkeypatch.delenv(var, raising=False)
    try:
        unset: Any = load(cls).model_dump()
    except ConfigurationError as exc:
        unset = exc.problems
    monkeypatch.setenv(var, blank)
    try:
        blank_result: Any = load(cls).model_dump()
    except ConfigurationError as exc:
        blank_result = exc.problems
        assert any(p.startswith(f"{var} is required but empty") for p in exc.problems), exc
        unset = [p.replace("but not set", "but empty (empty means unset)") for p in unset]
    assert blank_result == unset


def test_empty_broker_url_is_redis_url_and_empty_sentry_dsn_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _env(monkeypatch, {**BASE, "FIN_BROKER_URL": "", "SENTRY_DSN": " "})
    settings = load(WorkerSettings)
    assert settings.fin_broker_url is None and settings.broker_url == BASE["REDIS_URL"]
    assert settings.broker_is_redis and settings.sentry_dsn is None


def test_a_blank_environment_value_lets_the_env_file_apply(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Unset means what an unset variable means: the ``.env`` file's value, then the default."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "REDIS_URL=redis://127.0.0.1:7/0\nFIN_BROKER_URL=amqp://guest:guest@127.0.0.1:5672//\n"
    )
    monkeypatch.setenv("FIN_BROKER_URL", "")
    monkeypatch.setenv("REDIS_URL", "  ")
    settings = load(CommonSettings)
    assert settings.redis_url == "redis://127.0.0.1:7/0"
    assert settings.broker_url == "amqp://guest:guest@127.0.0.1:5672//"


def test_values_are_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, {**BASE, "REDIS_URL": " redis://127.0.0.1:1/0\n", "FIN_API_TOKEN": " t \n"})
    settings = load(WorkerSettings)
    assert settings.redis_url == "redis://127.0.0.1:1/0"
    assert settings.fin_api_token.get_secret_value() == "t"


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:notaport/0", "invalid port 'notaport'"),
        ("REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:70000/0", "invalid port"),
        ("REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:0/0", "invalid port"),
        ("REDIS_URL", f"redis://user:{PASSWORD}@/0", "no host"),
        ("REDIS_URL", f"redis://:{PASSWORD}@bad host:6379/0", "invalid host"),
        ("REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:6379/zero", "invalid database 'zero'"),
        ("REDIS_URL", f"redis://:{PASSWORD}@[::1:6379/0", "not a valid URL"),
        (
            "REDIS_URL",
            f"redis://127.0.0.1:6379/0?socket_timeout=soon&password={PASSWORD}",
            "redis-py",
        ),
        ("REDIS_URL", f"http://:{PASSWORD}@127.0.0.1:6379", "redis://, rediss:// or unix://"),
        ("REDIS_URL", f"sentinel://:{PASSWORD}@127.0.0.1:26379", "(got sentinel://)"),
        ("REDIS_URL", "unix://", "socket path"),
        ("REDIS_URL", "unix:///run/redis.sock", "FIN_BROKER_URL (redis+socket://"),
        ("FIN_BROKER_URL", f"amqp://user:{PASSWORD}@rabbit:56x72//", "invalid port '56x72'"),
        ("FIN_BROKER_URL", "amqp://", "no host"),
        ("FIN_BROKER_URL", f"amqpp://user:{PASSWORD}@rabbit:5672//", "(got amqpp://)"),
        ("FIN_BROKER_URL", f"memory://user:{PASSWORD}@x", "(got memory://)"),
        ("FIN_BROKER_URL", f"sentinel://:{PASSWORD}@h1:26379;;sentinel://h2:26379", "empty URL"),
        ("FIN_BROKER_URL", f"sentinel://:{PASSWORD}@h1:26379;sentinel://h2:x", "invalid port"),
        ("FIN_BROKER_URL", f"redis://:{PASSWORD}@h:6379/db", "invalid database"),
        ("FIN_API_BASE_URL", "https://api.intercom.io:https", "invalid port"),
        ("FIN_API_BASE_URL", "https://", "no host"),
        ("FIN_API_BASE_URL", f"https://me:{PASSWORD}@api.intercom.io", "credentials"),
        ("FIN_API_BASE_URL", "https://api.intercom.io/?region=eu", "query"),
        ("SENTRY_DSN", f"https://{PASSWORD}@o1.ingest.sentry.io/project", "project id"),
        ("SENTRY_DSN", "https://o1.ingest.sentry.io/1", "public key"),
        ("SENTRY_DSN", f"https://{PASSWORD}@o1.ingest.sentry.io:port/1", "invalid port"),
        ("SENTRY_DSN", f"udp://{PASSWORD}@o1.ingest.sentry.io/1", "http:// or https://"),
    ],
)
def test_every_url_is_parsed_whole_at_load(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    _env(monkeypatch, {**BASE, var: value})
    line = _error(WorkerSettings)
    assert line.startswith(f"configuration error: {var} "), line
    assert expected in line, line
    assert PASSWORD not in line  # a password never appears; a URL is shown masked
    for userinfo in re.findall(r"//([^/@\s]*)@", line):  # a URL shown: its user part masked
        assert userinfo.endswith("***") or userinfo == "<key>", line


@pytest.mark.parametrize(
    ("env", "broker"),
    [
        ({"REDIS_URL": "rediss://:pw@redis.example.com:6380/2"}, "rediss"),
        ({"REDIS_URL": "redis://[::1]:6379"}, "redis"),
        ({"REDIS_URL": "redis://localhost/"}, "redis"),
        ({"REDIS_URL": "redis://h:1/0?socket_timeout=2&health_check_interval=10"}, "redis"),
        (
            {"REDIS_URL": "unix:///run/redis.sock?db=1", "FIN_BROKER_URL": "redis+socket:///s"},
            "redis+socket",
        ),
        ({"FIN_BROKER_URL": "sentinel://:pw@h1:26379/0;sentinel://h2:26379/0"}, "sentinel"),
        ({"FIN_BROKER_URL": "amqp://user:pass@rabbit:5672//"}, "amqp"),
        ({"FIN_BROKER_URL": "pyamqp://user:pass@rabbit/vhost"}, "pyamqp"),
        ({"FIN_BROKER_URL": "amqps://user:pass@rabbit:5671/vhost"}, "amqps"),
        ({"FIN_API_BASE_URL": "http://127.0.0.1:8080/"}, "redis"),
        ({"SENTRY_DSN": "https://abc123@o1.ingest.sentry.io/42"}, "redis"),
    ],
)
def test_valid_urls_are_accepted(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], broker: str
) -> None:
    _env(monkeypatch, {**BASE, **env})
    settings = load(WorkerSettings)
    assert settings.broker_url.partition("://")[0] == broker
    assert settings.broker_is_redis is (broker not in ("amqp", "pyamqp", "amqps"))
    assert not settings.fin_api_base_url.endswith("/")


@pytest.mark.parametrize(
    ("cls", "var", "value", "expected"),
    [
        (WorkerSettings, "FIN_API_TOKEN", " ", "FIN_API_TOKEN is required but empty"),
        (IngestSettings, "FIN_WEBHOOK_SECRETS", "\t", "FIN_WEBHOOK_SECRETS is required but empty"),
        (IngestSettings, "FIN_WEBHOOK_SECRETS", "abc,,def", "entry 2 of 3 is empty"),
        (IngestSettings, "FIN_WEBHOOK_SECRETS", "abc, ", "entry 2 of 2 is empty"),
    ],
)
def test_every_required_secret_is_non_blank(
    monkeypatch: pytest.MonkeyPatch,
    cls: type[BaseSettings],
    var: str,
    value: str,
    expected: str,
) -> None:
    _env(monkeypatch, {**BASE, var: value})
    line = _error(cls)
    assert expected in line and "abc" not in line and "def" not in line, line


def test_a_secret_passed_as_an_argument_is_checked_too() -> None:
    with pytest.raises(ConfigurationError, match="FIN_API_TOKEN"):
        load(WorkerSettings, redis_url="redis://127.0.0.1:1/0", fin_api_token=" ")


def test_every_problem_is_named_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(
        monkeypatch,
        {
            "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:notaport/0",
            "FIN_API_TOKEN": "",
            "FIN_API_BASE_URL": "https://api.intercom.io:x",
            "FIN_RATE_LIMIT_PER_MINUTE": "lots",
        },
    )
    with pytest.raises(ConfigurationError) as info:
        load(WorkerSettings)
    line, problems = str(info.value), info.value.problems
    assert [p.split()[0] for p in problems] == [
        "REDIS_URL",
        "FIN_API_TOKEN",
        "FIN_API_BASE_URL",
        "FIN_RATE_LIMIT_PER_MINUTE",
    ]
    assert line == "configuration error: " + "; ".join(problems)
    assert "\n" not in line and "more)" not in line and PASSWORD not in line
    assert "redis://:***@127.0.0.1:notaport/0" in line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw@h:6379/0", "redis://user:***@h:6379/0"),
        ("redis://pw@h:6379/0", "redis://***@h:6379/0"),
        ("amqp://u:p@ss:w@rd@h:5672//", "amqp://u:***@h:5672//"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://h/0?password=pw&db=1", "redis://h/0?password=***&db=1"),
        ("sentinel://:a@h1:1;sentinel://:b@h2:2", "sentinel://:***@h1:1;sentinel://:***@h2:2"),
        ("https://key@o1.ingest.sentry.io/1", "https://***@o1.ingest.sentry.io/1"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown

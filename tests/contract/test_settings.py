from __future__ import annotations

import pytest

from fin_relay.contract.errors import ConfigurationError
from fin_relay.contract.settings import (
    CommonSettings,
    IngestSettings,
    ProducerSettings,
    WorkerSettings,
    load,
)

TOKEN = "tok_very_secret_123"
SECRET = "whsec_shhh_456"


def test_missing_required_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    with pytest.raises(ConfigurationError) as info:
        load(WorkerSettings)
    line = str(info.value)
    assert "FIN_API_TOKEN" in line and "\n" not in line
    with pytest.raises(ConfigurationError, match="FIN_WEBHOOK_SECRETS"):
        load(IngestSettings)


def test_redis_url_required_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="REDIS_URL is required"):
        load(CommonSettings)
    monkeypatch.setenv("REDIS_URL", "http://nope")
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        load(CommonSettings)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("FIN_RATE_LIMIT_PER_MINUTE", "lots"),
        ("FIN_RATE_LIMIT_PER_MINUTE", "0"),
        ("FIN_API_VERSION", "2.13"),
        ("FIN_API_BASE_URL", "ftp://x"),
        ("FIN_RELAY_NAMESPACE", "a b"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("FIN_API_TOKEN", TOKEN)
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigurationError) as info:
        load(WorkerSettings)
    assert var in str(info.value)
    assert value not in str(info.value) or value in ("0",)  # input values are hidden


def test_retry_deadline_must_stay_under_dedup_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("FIN_API_TOKEN", TOKEN)
    monkeypatch.setenv("FIN_RELAY_RETRY_DEADLINE_S", "400")
    with pytest.raises(ConfigurationError, match="FIN_RELAY_RETRY_DEADLINE_S"):
        load(WorkerSettings)


def test_no_secret_in_any_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("FIN_API_TOKEN", TOKEN)
    monkeypatch.setenv("FIN_WEBHOOK_SECRETS", f"{SECRET},other_secret_789")
    monkeypatch.setenv("SENTRY_DSN", "https://dsnkey_abc@o1.ingest.sentry.io/1")
    for settings in (load(WorkerSettings), load(IngestSettings), load(ProducerSettings)):
        text = repr(settings) + str(settings) + str(settings.model_dump())
        for secret in (TOKEN, SECRET, "other_secret_789", "dsnkey_abc"):
            assert secret not in text
    ingest = load(IngestSettings)
    assert ingest.webhook_secrets == [SECRET.encode(), b"other_secret_789"]
    assert load(WorkerSettings).fin_api_token.get_secret_value() == TOKEN


def test_defaults_and_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "REDIS_URL=redis://127.0.0.1:7/0\nFIN_API_TOKEN=abc\nOTHER_APP=1\n"
    )
    settings = load(WorkerSettings)
    assert settings.redis_url == "redis://127.0.0.1:7/0"
    assert settings.broker_url == settings.redis_url
    assert settings.fin_api_base_url == "https://api.intercom.io"
    assert settings.fin_api_version == "2.15"
    assert settings.fin_rate_limit_per_minute == 10_000
    assert settings.window_budget == 1666
    assert settings.fin_relay_namespace == "fin"
    monkeypatch.setenv("FIN_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    assert load(WorkerSettings).broker_url.startswith("amqp://")
    assert not load(WorkerSettings).broker_is_redis

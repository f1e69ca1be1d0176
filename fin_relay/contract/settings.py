"""Settings per component, from environment variables (and ``.env``), validated at start-up.

Field names are the environment variable names, lower-cased (``REDIS_URL`` -> ``redis_url``).
The documented variables (README) keep their names; tuning knobs fin-relay adds are prefixed
``FIN_RELAY_``. Secrets are ``SecretStr``: they never appear in a ``repr`` or a log line.
Use :func:`load` to build one: a bad or missing value raises :class:`ConfigurationError` with
one line naming the variable.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fin_relay.contract.errors import ConfigurationError
from fin_relay.contract.fin_api import API_VERSIONS, VersionPolicy

FIN_REGIONS = (
    "https://api.intercom.io",
    "https://api.eu.intercom.io",
    "https://api.au.intercom.io",
)
FIN_DEDUP_WINDOW_S = 300.0  # Fin de-duplicates messages by timestamp within 5 minutes.

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


def _check_redis_url(value: str, var: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in ("redis", "rediss", "unix", "redis+sentinel", "sentinel"):
        raise ValueError(f"{var} must be a redis://, rediss:// or unix:// URL")
    return value


class CommonSettings(BaseSettings):
    """What every component needs: Redis, the broker, the namespace, Sentry."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,
    )

    redis_url: str
    fin_broker_url: str | None = None
    fin_relay_namespace: str = "fin"
    sentry_dsn: SecretStr | None = None
    fin_relay_traces_sample_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    fin_relay_stream_maxlen: PositiveInt = 100_000
    fin_relay_redis_timeout_s: PositiveFloat = 2.0
    fin_relay_environment: str = "production"

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return _check_redis_url(value, "REDIS_URL")

    @field_validator("fin_relay_namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not value or any(c in value for c in " \t\r\n{}:"):
            raise ValueError("must be non-empty, without spaces, braces or ':'")
        return value

    @property
    def broker_url(self) -> str:
        """The Celery broker: ``FIN_BROKER_URL``, else ``REDIS_URL``."""
        return self.fin_broker_url if self.fin_broker_url is not None else self.redis_url

    @property
    def broker_is_redis(self) -> bool:
        return urlsplit(self.broker_url).scheme in ("redis", "rediss", "unix", "sentinel")


class FinVersionSettings(CommonSettings):
    """Which ``Intercom-Version`` jobs are checked against (the producer) and sent with (the
    worker). Operations that exist only in Preview (ask, escalate, capabilities, procedure_run)
    carry ``Intercom-Version: Preview`` whatever ``FIN_API_VERSION`` is, unless
    ``FIN_RELAY_PREVIEW_OPERATIONS=refuse``, which refuses them instead."""

    fin_api_version: str = "2.15"
    fin_relay_preview_operations: Literal["preview", "refuse"] = "preview"

    @field_validator("fin_api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value not in API_VERSIONS:
            raise ValueError(
                f"must be one of {', '.join(API_VERSIONS)} (the Fin Agent API needs >= 2.14)"
            )
        return value

    @property
    def fin_versions(self) -> VersionPolicy:
        """The version policy the producer checks jobs with and the worker sends them with."""
        return VersionPolicy(self.fin_api_version, self.fin_relay_preview_operations == "preview")


class WorkerSettings(FinVersionSettings):
    """The worker: Fin's API, the quota, retries, timeouts."""

    fin_api_token: SecretStr
    fin_api_base_url: str = FIN_REGIONS[0]
    fin_rate_limit_per_minute: PositiveInt = 10_000
    fin_relay_connect_timeout_s: PositiveFloat = 5.0
    fin_relay_read_timeout_s: PositiveFloat = 30.0
    fin_relay_max_attempts: PositiveInt = 8
    fin_relay_backoff_base_s: PositiveFloat = 0.5
    fin_relay_backoff_max_s: PositiveFloat = 30.0
    # Total retry deadline of a message-bearing call: under Fin's 5-minute de-dup window.
    fin_relay_retry_deadline_s: PositiveFloat = 240.0
    # Celery/Redis redelivers unacked messages after this; no countdown may come near it.
    fin_relay_visibility_timeout_s: PositiveFloat = 3600.0
    fin_relay_sequence_hold_max_s: PositiveFloat = 120.0
    fin_relay_auth_probe_interval_s: PositiveFloat = 15.0
    fin_relay_task_time_limit_s: PositiveFloat = 120.0
    # Serve Prometheus metrics on this port (off when unset).
    fin_relay_metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # Exit (for a supervisor to restart) when jobs wait in a consumed queue this long while
    # this worker has free slots and starts nothing: Celery's "stops consuming after a broker
    # reconnect" failure. 0 turns the watchdog off.
    fin_relay_stuck_consumer_s: Annotated[float, Field(ge=0)] = 120.0

    @field_validator("fin_api_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL such as https://api.intercom.io")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _deadlines(self) -> WorkerSettings:
        if self.fin_relay_retry_deadline_s >= FIN_DEDUP_WINDOW_S:
            raise ValueError(
                "FIN_RELAY_RETRY_DEADLINE_S must stay under Fin's 300 s de-duplication window"
            )
        if self.fin_relay_backoff_max_s >= self.fin_relay_visibility_timeout_s:
            raise ValueError(
                "FIN_RELAY_BACKOFF_MAX_S must stay under FIN_RELAY_VISIBILITY_TIMEOUT_S"
            )
        return self

    @property
    def window_budget(self) -> int:
        """Calls allowed per 10-second window: the per-minute quota split into 6 (Intercom's rule)."""
        return max(1, self.fin_rate_limit_per_minute // 6)


class IngestSettings(CommonSettings):
    """The webhook ingest: secrets (and how they become HMAC keys), body cap, de-dup TTL, and
    how long a client may take to send a request."""

    fin_webhook_secrets: SecretStr
    fin_relay_max_body_bytes: PositiveInt = 1024 * 1024
    fin_relay_dedup_ttl_s: PositiveInt = 24 * 3600
    fin_relay_enqueue_timeout_s: PositiveFloat = 2.0
    #: A webhook whose whole body has not arrived this long after its headers is answered 408
    #: (a slow or stalled client must not hold a connection and its request indefinitely).
    fin_relay_body_timeout_s: PositiveFloat = 5.0
    #: ``fin-relay ingest``: a connection that has not sent a request's complete headers this
    #: long after it opened (or after its previous response) is closed (408 when a request
    #: had begun).
    fin_relay_header_timeout_s: PositiveFloat = 5.0
    # How a signing secret becomes the HMAC key (Intercom's docs do not say): "auto" tries its
    # UTF-8 bytes and, for an even-length hex secret, its hex-decoded bytes; "utf8"/"hex" pin one.
    fin_relay_webhook_secret_encoding: Literal["auto", "utf8", "hex"] = "auto"  # noqa: S105

    @field_validator("fin_webhook_secrets")
    @classmethod
    def _secrets(cls, value: SecretStr) -> SecretStr:
        if not [s for s in value.get_secret_value().split(",") if s.strip()]:
            raise ValueError("at least one non-empty secret is required")
        return value

    @field_validator("fin_relay_webhook_secret_encoding", mode="before")
    @classmethod
    def _encoding_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("fin_relay_webhook_secret_encoding")
    @classmethod
    def _encoding(cls, value: str, info: Any) -> str:
        secrets = info.data.get("fin_webhook_secrets")  # absent when it failed validation
        if value == "hex" and isinstance(secrets, SecretStr):
            entries = [s.strip() for s in secrets.get_secret_value().split(",") if s.strip()]
            hex_digits = set("0123456789abcdefABCDEF")
            for position, entry in enumerate(entries, 1):
                if len(entry) % 2 or not set(entry) <= hex_digits:
                    raise ValueError(
                        f"is hex but FIN_WEBHOOK_SECRETS entry {position} of {len(entries)} "
                        "is not an even-length hex string (use auto or utf8)"
                    )
        return value

    @property
    def webhook_secrets(self) -> list[bytes]:
        """Every accepted signing secret, as the UTF-8 bytes used as the HMAC key."""
        return [
            s.strip().encode()
            for s in self.fin_webhook_secrets.get_secret_value().split(",")
            if s.strip()
        ]


class ProducerSettings(FinVersionSettings):
    """The producer: how long an enqueue may take before it fails."""

    fin_relay_enqueue_timeout_s: PositiveFloat = 2.0
    fin_relay_idempotency_window_s: PositiveInt = 24 * 3600


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S], **overrides: Any) -> S:
    """Build settings, turning a validation error into one line that names the variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) if first["loc"] else ""
        var = loc.upper() if loc else cls.__name__
        msg = first["msg"]
        if first["type"] == "missing":
            msg = "is required but not set"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigurationError(f"configuration error: {var} {msg}{more}".strip()) from None

"""Settings per component, from environment variables (and ``.env``), validated at start-up.

Field names are the environment variable names, lower-cased (``REDIS_URL`` -> ``redis_url``).
The documented variables (README) keep their names; tuning knobs fin-relay adds are prefixed
``FIN_RELAY_``. Secrets are ``SecretStr``: they never appear in a ``repr`` or a log line.
Use :func:`load` to build one: a bad or missing value raises :class:`ConfigurationError` with
one line naming the variable (every wrong variable, when several are).

One rule for every setting, whatever starts the process (compose, a Procfile, systemd): an
empty or whitespace-only value means *unset* (``FIN_BROKER_URL=""`` means ``REDIS_URL``,
``SENTRY_DSN=""`` no Sentry, an empty required secret is missing), and every URL is parsed
whole at start-up (scheme, host, port, Redis database) so a bad one is refused at load, with
its password masked in the message, instead of failing later in a connection.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from fin_relay.contract import guarantees
from fin_relay.contract.errors import ConfigurationError
from fin_relay.contract.fin_api import API_VERSIONS, VersionPolicy

FIN_DEDUP_WINDOW_S = guarantees.FIN_DEDUP_WINDOW_S  # Fin's de-dup window (the rules' home)

FIN_REGIONS = (
    "https://api.intercom.io",
    "https://api.eu.intercom.io",
    "https://api.au.intercom.io",
)

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]

#: ``REDIS_URL``: what redis-py connects to (Sentinel belongs in ``FIN_BROKER_URL``).
REDIS_SCHEMES = ("redis", "rediss", "unix")
#: ``FIN_BROKER_URL``: the Celery brokers fin-relay supports, Redis and RabbitMQ.
REDIS_BROKER_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel")
BROKER_SCHEMES = (*REDIS_BROKER_SCHEMES, "amqp", "amqps", "pyamqp", "librabbitmq")
_SOCKET_SCHEMES = ("unix", "redis+socket")  # a socket path, no host
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_SECRET_QUERY_KEYS = re.compile(r"pass|secret|token|key|auth|cred", re.IGNORECASE)


# --- URLs: parsed whole at start-up, shown with their passwords masked -----------------------


def redact_url(url: str) -> str:
    """``url`` with its password masked (``redis://:***@host:6379/0``), for messages and logs.

    A user part without a password is masked whole (``https://***@o1.ingest.sentry.io/1``: a
    Sentry DSN's key, or a Redis password written without its colon), and so are query values
    whose name suggests a secret. A list of URLs (``sentinel://a;sentinel://b``) is masked each.
    """
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    authority_end = len(rest)
    for char in "/?#":
        position = rest.find(char)
        if position != -1:
            authority_end = min(authority_end, position)
    authority, tail = rest[:authority_end], rest[authority_end:]
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        authority = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        pairs = [
            f"{key}={'***' if _SECRET_QUERY_KEYS.search(key) else value}" if eq else key
            for key, eq, value in (item.partition("=") for item in query.split("&"))
        ]
        tail = f"{path}?{'&'.join(pairs)}{hash_}{fragment}"
    return f"{scheme}://{authority}{tail}"


def _schemes_text(schemes: Sequence[str]) -> str:
    names = [f"{s}://" for s in schemes]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _split_url(value: str, schemes: Sequence[str], *, example: str) -> SplitResult:
    """Parse ``value`` whole (scheme, host, port), or raise ``ValueError`` saying what is wrong
    (the URL shown with its password masked; a wrong scheme shows the scheme only)."""
    shown = redact_url(value)
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # e.g. an unbalanced [IPv6] bracket
        raise ValueError(f"is not a valid URL: {exc} ({shown})") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        got = f"{scheme}://" if scheme and "://" in value else "no scheme"
        raise ValueError(
            f"must be a {_schemes_text(schemes)} URL such as {example} (got {got})"
        ) from None
    if scheme in _SOCKET_SCHEMES:
        if parts.netloc.rpartition("@")[2] or not parts.path.strip("/"):
            raise ValueError(f"must name a socket path ({scheme}:///path/to/redis.sock)")
        return parts
    if not parts.hostname:
        raise ValueError(f"has no host ({shown})")
    host = parts.hostname
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"has an invalid host ({shown})") from None
    elif not _HOST_NAME.fullmatch(host):
        raise ValueError(f"has an invalid host ({shown})")
    try:
        port = parts.port
    except ValueError:
        raw = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ValueError(f"has an invalid port {raw!r} ({shown})") from None
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ValueError(f"has an invalid port ({shown})")
    return parts


def _check_db_path(parts: SplitResult, shown: str) -> None:
    """A Redis URL's path is the database number: empty, ``/`` or ``/N``."""
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"has an invalid database {db!r}: the path must be /0, /1, ... ({shown})")


def _check_redis_url(value: str) -> str:
    parts = _split_url(value, REDIS_SCHEMES, example="redis://host:6379/0")
    shown = redact_url(value)
    if parts.scheme.lower() != "unix":
        _check_db_path(parts, shown)
    from redis.connection import parse_url  # query arguments as redis-py reads them

    try:
        parse_url(value)  # type: ignore[no-untyped-call]
    except ValueError as exc:  # redis-py's messages name the argument, never a value
        raise ValueError(f"is not a URL redis-py accepts: {exc} ({shown})") from None
    return value


def _check_broker_url(value: str) -> str:
    shown = redact_url(value)
    parts_list = value.split(";")  # kombu: a failover list, e.g. sentinel://a;sentinel://b
    for text in parts_list:
        if not text.strip():
            raise ValueError(f"has an empty URL in its ';'-separated list ({shown})")
        parts = _split_url(text.strip(), BROKER_SCHEMES, example="amqp://host:5672/vhost")
        if parts.scheme.lower() in ("redis", "rediss", "sentinel"):
            _check_db_path(parts, shown)
    return ";".join(text.strip() for text in parts_list)


def _check_sentry_dsn(value: str) -> str:
    shown = redact_url(value)
    parts = _split_url(value, ("http", "https"), example="https://<key>@o0.ingest.sentry.io/0")
    if not parts.username:
        raise ValueError(f"has no public key (https://<key>@host/<project>) ({shown})")
    project = parts.path.rstrip("/").rpartition("/")[2]
    if not project.isdigit():
        raise ValueError(f"must end with the numeric project id ({shown})")
    return value


# --- empty means unset --------------------------------------------------------------------


def _blank(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


class _BlankIsUnset(PydanticBaseSettingsSource):
    """One settings source (init arguments, the environment, ``.env``) with every empty or
    whitespace-only value left out, as if the variable were not set, and the other values
    stripped of surrounding whitespace (``FIN_BROKER_URL=""`` means ``REDIS_URL``,
    ``SENTRY_DSN=""`` no Sentry, ``FIN_API_TOKEN=" "`` is missing)."""

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(inner.settings_cls)
        self.inner = inner
        self.__name__ = getattr(inner, "__name__", type(inner).__name__)

    def _set_current_state(self, state: dict[str, Any]) -> None:
        super()._set_current_state(state)
        self.inner._set_current_state(state)

    def _set_settings_sources_data(self, states: dict[str, dict[str, Any]]) -> None:
        super()._set_settings_sources_data(states)
        self.inner._set_settings_sources_data(states)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return {
            key: value.strip() if isinstance(value, str) else value
            for key, value in self.inner().items()
            if not _blank(value)
        }


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
    # Celery/Redis redelivers unacked messages after this: it must exceed the longest countdown
    # plus the task time limit (fin_relay.contract.guarantees). Every Celery client of a Redis
    # broker (worker, ``celery inspect``, ...) must use the same value.
    fin_relay_visibility_timeout_s: PositiveFloat = 3600.0

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The usual sources and order, each with empty values meaning unset."""
        return tuple(
            _BlankIsUnset(source)
            for source in (init_settings, env_settings, dotenv_settings, file_secret_settings)
        )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return _check_redis_url(value)

    @field_validator("fin_broker_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_broker_url(value)

    @field_validator("sentry_dsn")
    @classmethod
    def _sentry_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_sentry_dsn(value.get_secret_value())
        return value

    @field_validator("fin_relay_namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not value or any(c in value for c in " \t\r\n{}:"):
            raise ValueError("must be non-empty, without spaces, braces or ':'")
        return value

    @model_validator(mode="after")
    def _broker_from_redis_url(self) -> CommonSettings:
        if self.fin_broker_url is None and urlsplit(self.redis_url).scheme.lower() == "unix":
            raise ValueError(
                "REDIS_URL is a unix:// socket, which Celery cannot use as its broker: "
                "set FIN_BROKER_URL (redis+socket:///path/to/redis.sock)"
            )
        return self

    @property
    def broker_url(self) -> str:
        """The Celery broker: ``FIN_BROKER_URL``, else ``REDIS_URL``."""
        return self.fin_broker_url if self.fin_broker_url is not None else self.redis_url

    @property
    def broker_is_redis(self) -> bool:
        return urlsplit(self.broker_url).scheme.lower() in REDIS_BROKER_SCHEMES


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
    fin_relay_sequence_hold_max_s: PositiveFloat = 120.0
    fin_relay_auth_probe_interval_s: PositiveFloat = 15.0
    fin_relay_task_time_limit_s: PositiveFloat = 120.0
    # Serve Prometheus metrics on this port (off when unset).
    fin_relay_metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # Exit (for a supervisor to restart) when jobs wait in a consumed queue this long while
    # this worker has free slots and starts nothing: Celery's "stops consuming after a broker
    # reconnect" failure. 0 turns the watchdog off.
    fin_relay_stuck_consumer_s: Annotated[float, Field(ge=0)] = 120.0

    @field_validator("fin_api_token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("fin_api_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = _split_url(value, ("http", "https"), example="https://api.intercom.io")
        if "@" in parts.netloc:
            raise ValueError(
                f"must not hold credentials (the token is FIN_API_TOKEN) ({redact_url(value)})"
            )
        if parts.query or parts.fragment or "?" in value or "#" in value:
            raise ValueError("must not have a query or fragment (https://api.intercom.io)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _guarantees(self) -> WorkerSettings:
        """The delivery-guarantee rules across variables (``fin_relay.contract.guarantees``:
        the same the worker's start-up and ``fin-relay doctor`` apply)."""
        found = guarantees.problems(self)
        if found:
            raise guarantees.GuaranteeError(found)
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
        entries = value.get_secret_value().split(",")
        for position, entry in enumerate(entries, 1):
            if not entry.strip():
                raise ValueError(
                    "must not be empty"
                    if len(entries) == 1
                    else f"entry {position} of {len(entries)} is empty (a stray comma?)"
                )
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


def _env_is_blank(var: str) -> bool:
    """Is ``var`` set in the environment, but empty or whitespace-only?"""
    return any(key.upper() == var and _blank(value) for key, value in os.environ.items())


def configuration_problems(exc: ValidationError, cls: type[BaseSettings]) -> list[str]:
    """Every problem of a failed settings validation, each one line naming its variable (a
    delivery-guarantee rule across variables: one line per rule broken, with the numbers it
    compares). Input values never appear otherwise (``hide_input_in_errors``; URLs are shown
    masked)."""
    problems = []
    for error in exc.errors():
        broken = (error.get("ctx") or {}).get("error")
        if isinstance(broken, guarantees.GuaranteeError):  # a rule across variables: each
            problems += [p for p in broken.problems if p not in problems]
            continue
        var = ".".join(str(p) for p in error["loc"]).upper()
        msg = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            blank = bool(var) and _env_is_blank(var)
            msg = f"is required but {'empty (empty means unset)' if blank else 'not set'}"
        problem = f"{var} {msg}" if var else msg
        if problem not in problems:
            problems.append(problem)
    return problems or [f"{cls.__name__} is invalid"]


def load(cls: type[S], **overrides: Any) -> S:
    """Build settings; a validation error becomes a :class:`ConfigurationError`: one line
    naming each variable that is wrong (``problems`` lists them one by one)."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = configuration_problems(exc, cls)
        raise ConfigurationError(
            f"configuration error: {'; '.join(problems)}", problems=problems
        ) from None

"""Simulator configuration: one dataclass shared by the CLI, the in-process server and tests.

Every field can be changed at run time through ``POST /_sim/config`` (see :func:`apply_updates`),
except ``host``/``port``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from fin_relay.contract.fin_api import API_VERSIONS

#: Default webhook retry policy (Intercom documents none: chosen here, see docs/simulator.md).
DEFAULT_WEBHOOK_ATTEMPTS = 5
DEFAULT_WEBHOOK_BACKOFF_S = 0.5
DEFAULT_WEBHOOK_TIMEOUT_S = 5.0

#: Fields that cannot change once the server is listening.
_FIXED_FIELDS = frozenset({"host", "port"})
_MASK = "*" * 3


@dataclass
class SimulatorConfig:
    """Everything the simulator needs; defaults suit a developer running it by hand.

    Secrets (``token``, ``secret``) are excluded from ``repr``.
    """

    host: str = "127.0.0.1"
    port: int = 0
    token: str = field(default="sim-token", repr=False)
    secret: str = field(default="sim-secret", repr=False)
    callback_url: str | None = None
    #: Intercom's per-minute quota; the window limit is ``rate_limit_per_minute // 6`` (floor).
    rate_limit_per_minute: int = 10_000
    #: Fixed rate-limit window length (10 s like Intercom; shorter only for tests).
    rate_limit_window_s: int = 10
    retry_after: bool = False
    api_version_default: str = "2.15"
    #: Delay between the API response and the first webhook of a turn.
    reply_delay_ms: float = 500.0
    #: ``fin_replied`` events per normal turn.
    reply_parts: int = 1
    #: Include ``sse_subscription_url`` in responses (no SSE server is run).
    sse: bool = False
    #: Per-endpoint fault specs, ``{"start": {...}, "*": {...}}`` (see ``faults.FaultSpec``).
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    webhook_attempts: int = DEFAULT_WEBHOOK_ATTEMPTS
    webhook_backoff_s: float = DEFAULT_WEBHOOK_BACKOFF_S
    webhook_timeout_s: float = DEFAULT_WEBHOOK_TIMEOUT_S
    #: Deliver every event twice (byte-identical, same signature).
    webhook_duplicate: bool = False
    #: Deliver each turn's events in reverse order.
    webhook_out_of_order: bool = False
    #: Send a ``HEAD`` to the callback URL before the first POST to it.
    webhook_head_probe: bool = False
    #: How long after ``csat_requested`` a rating is accepted.
    csat_window_s: float = 86_400.0
    #: Entries kept in the request and webhook logs (oldest dropped first).
    log_limit: int = 100_000
    #: Keep each request's parsed JSON body in the request log (benchmarks switch it off).
    log_bodies: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if self.api_version_default not in API_VERSIONS:
            raise ValueError(f"api_version_default must be one of {', '.join(API_VERSIONS)}")
        if self.rate_limit_per_minute < 6:
            raise ValueError("rate_limit_per_minute must be >= 6 (one request per window)")
        if self.rate_limit_window_s < 1:
            raise ValueError("rate_limit_window_s must be >= 1")
        if self.webhook_attempts < 1:
            raise ValueError("webhook_attempts must be >= 1")
        if self.reply_parts < 1:
            raise ValueError("reply_parts must be >= 1")
        if not self.token:
            raise ValueError("token must not be empty")

    def public(self) -> dict[str, Any]:
        """The configuration without secrets (for ``GET /_sim/config``)."""
        data = dataclasses.asdict(self)
        data["token"] = data["secret"] = _MASK
        return data

    def to_args(self) -> list[str]:
        """Command-line arguments for ``fin-relay simulator`` reproducing this configuration."""
        args = [
            "--host", self.host, "--port", str(self.port),
            "--token", self.token, "--secret", self.secret,
            "--rate-limit-per-minute", str(self.rate_limit_per_minute),
            "--rate-limit-window-s", str(self.rate_limit_window_s),
            "--api-version-default", self.api_version_default,
            "--reply-delay-ms", str(self.reply_delay_ms),
            "--reply-parts", str(self.reply_parts),
            "--webhook-attempts", str(self.webhook_attempts),
            "--webhook-backoff-s", str(self.webhook_backoff_s),
            "--webhook-timeout-s", str(self.webhook_timeout_s),
            "--csat-window-s", str(self.csat_window_s),
            "--log-limit", str(self.log_limit),
        ]  # fmt: skip
        if self.callback_url is not None:
            args += ["--callback-url", self.callback_url]
        if self.faults:
            args += ["--faults-json", json.dumps(self.faults)]
        flags = {
            "--retry-after": self.retry_after,
            "--sse": self.sse,
            "--webhook-duplicate": self.webhook_duplicate,
            "--webhook-out-of-order": self.webhook_out_of_order,
            "--webhook-head-probe": self.webhook_head_probe,
            "--no-log-bodies": not self.log_bodies,
        }
        args += [flag for flag, on in flags.items() if on]
        return args


def apply_updates(config: SimulatorConfig, updates: dict[str, Any]) -> SimulatorConfig:
    """A copy of ``config`` with ``updates`` applied; ``ValueError`` names an unknown field."""
    names = {f.name for f in dataclasses.fields(config)}
    for key in updates:
        if key not in names or key in _FIXED_FIELDS:
            raise ValueError(f"unknown or read-only config field: {key}")
    new = dataclasses.replace(config, **updates)
    new.validate()
    return new

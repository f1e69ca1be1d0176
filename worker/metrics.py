"""Prometheus counters of the worker (``fin_relay.observability`` defines them; docs in the
README). Thin helpers so the call path stays readable; each costs well under a microsecond.

Importing this module (every worker does, through its tasks) creates the worker's series, and
only those: a worker's ``/metrics`` (``FIN_RELAY_METRICS_PORT``) lists no ingest series, and
the ingest's none of these.
"""

from __future__ import annotations

from fin_relay import observability as obs
from fin_relay.worker.fin_client import RateLimitInfo

obs.enable_metrics(obs.WORKER)


def outcome(operation: str, kind: str, reason: str | None, latency_ms: float) -> None:
    """A terminal outcome: calls by outcome, Fin latency, dead letters."""
    obs.CALLS.labels(operation, kind).inc()
    if latency_ms > 0:
        obs.CALL_LATENCY.labels(operation).observe(latency_ms / 1000.0)
    if kind == "failed":
        obs.DEAD_LETTERS.labels("job", reason or "failed").inc()


def quota(rate: RateLimitInfo) -> None:
    """Fin's ``X-RateLimit-Remaining`` as last reported."""
    if rate.remaining is not None:
        obs.QUOTA_REMAINING.set(rate.remaining)


def retry(reason: str) -> None:
    obs.RETRIES.labels(reason).inc()


def rate_limited() -> None:
    obs.RATE_LIMITED.inc()


def limiter_wait(wait_s: float) -> None:
    obs.LIMITER_WAIT.observe(wait_s)


def sequence_overrun() -> None:
    obs.SEQUENCE_OVERRUNS.inc()


def event_published(lag_ms: int) -> None:
    if lag_ms >= 0:
        obs.EVENT_LATENCY.observe(lag_ms / 1000.0)


def event_dead(reason: str) -> None:
    obs.DEAD_LETTERS.labels("event", reason).inc()

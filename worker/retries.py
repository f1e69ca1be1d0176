"""Retry policy: exponential backoff with full jitter, a maximum number of failures, and a
total deadline that keeps a message-bearing call inside Fin's 5-minute de-duplication window.

Pure functions only; the task applies the decision (``task.retry(countdown=...)``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fin_relay.contract import guarantees
from fin_relay.contract.settings import WorkerSettings


def compute_backoff(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter backoff: uniform in ``[0, min(max_s, base_s * 2**(attempt-1))]``.

    ``attempt`` counts failures so far (1 = the first failure). Never negative, never above
    ``max_s`` (AWS architecture blog, "Exponential Backoff And Jitter").
    """
    exponent = max(0, attempt - 1)
    ceiling = max_s if exponent >= 63 else min(max_s, base_s * (2**exponent))
    return rng.uniform(0.0, ceiling)


@dataclass(frozen=True)
class RetryPlan:
    """What to do after a retryable failure: retry after ``delay_s``, or give up with ``reason``."""

    delay_s: float | None
    reason: str | None = None

    @property
    def give_up(self) -> bool:
        return self.delay_s is None


def plan_retry(
    *,
    failures: int,
    hint_s: float | None,
    ambiguous_since_ms: int | None,
    now_ms: int,
    settings: WorkerSettings,
    rng: random.Random,
) -> RetryPlan:
    """Decide the next step after the ``failures``-th retryable failure of one job.

    * ``failures >= fin_relay_max_attempts`` → give up (``max_attempts``).
    * The next attempt would start after ``ambiguous_since_ms + fin_relay_retry_deadline_s``
      → give up (``deadline_exceeded``). ``ambiguous_since_ms`` is when the first request whose
      fate is unknown (timeout, 5xx, dropped connection) was sent: only from then on could Fin
      hold the message, so only from then on does the 5-minute de-dup window matter.
    * otherwise wait the server's hint when it gave one, else the jittered backoff.
    """
    if failures >= settings.fin_relay_max_attempts:
        return RetryPlan(None, "max_attempts")
    if hint_s is not None:
        delay_s = min(max(hint_s, 0.0), settings.fin_relay_backoff_max_s)
    else:
        delay_s = compute_backoff(
            failures, settings.fin_relay_backoff_base_s, settings.fin_relay_backoff_max_s, rng
        )
    if ambiguous_since_ms is not None:
        deadline_ms = ambiguous_since_ms + settings.fin_relay_retry_deadline_s * 1000.0
        if now_ms + delay_s * 1000.0 >= deadline_ms:
            return RetryPlan(None, "deadline_exceeded")
    return RetryPlan(delay_s)


def defer_delay_s(defers: int, base_s: float = 0.1, max_s: float = 1.0) -> float:
    """Countdown of a job deferred for its conversation's turn: growing, capped, small."""
    return min(max_s, base_s * (1.5 ** max(0, defers)))


def longest_countdown_s(settings: WorkerSettings) -> float:
    """The longest countdown the worker ever gives a re-published job (the one rule in
    ``contract.guarantees``).

    Every countdown is capped to this — a wait for the next rate-limit window or a long 429
    hint included: the job then wakes early, sees the fleet still has to wait and is deferred
    again without calling Fin (a few wake-ups per window, not a spin).
    """
    return guarantees.longest_countdown_s(settings)


#: What a delivery may spend besides its HTTP call while holding its job's lease: up to three
#: in-thread quota waits under 1 s each, and its Redis round trips.
LEASE_MARGIN_S = 5.0


def lease_s(settings: WorkerSettings) -> float:
    """Longest life of a job's lease (``sequencing.lua``): the longest one delivery can run.

    A lease is normally freed sooner: by its holder (outcome recorded, or re-published), or
    when the holder's worker heartbeat expires (a killed worker). This bound covers the rest
    (a worker restarted under the same hostname, a holder that could not release it): at least
    the task time limit and the longest HTTP call (connect + write + read timeouts), plus
    :data:`LEASE_MARGIN_S`.
    """
    http_s = settings.fin_relay_connect_timeout_s + 2 * settings.fin_relay_read_timeout_s
    return max(settings.fin_relay_task_time_limit_s, http_s) + LEASE_MARGIN_S

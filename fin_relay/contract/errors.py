"""One root for every fin-relay error, split into *retryable* and *permanent*.

Third-party exceptions (httpx, redis, pydantic) are translated at the boundary into these,
so the one retry layer in the worker decides on the class alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class FinRelayError(Exception):
    """Root of every error fin-relay raises on purpose."""


class ConfigurationError(FinRelayError):
    """Bad or missing configuration, found at start-up. ``str()`` is one line naming the
    variable (each of them, ``; ``-separated, when several are wrong); ``problems`` lists them
    one by one. Never holds a secret: URLs appear with their passwords masked."""

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) or [message]


class InvalidJobError(FinRelayError, ValueError):
    """A job's arguments do not match the Fin request body (raised at enqueue, dead-letters in a worker)."""


class BrokerUnavailableError(FinRelayError):
    """The broker (or Redis) did not accept the job within the configured bound."""


class RetryableError(FinRelayError):
    """Worth trying again later: 5xx, 408, 429, timeouts, connection errors.

    ``delay_s`` is the server's hint (``X-RateLimit-Reset``/``Retry-After``) when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        delay_s: float | None = None,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.delay_s = delay_s
        self.body = body
        self.request_id = request_id


class RateLimitedError(RetryableError):
    """HTTP 429 ``rate_limit_exceeded``: the whole fleet waits until the window resets."""


class AuthError(RetryableError):
    """HTTP 401: the token is wrong or was regenerated. The fleet pauses; jobs are kept."""


class PermanentError(FinRelayError):
    """Retrying cannot help: 400/403/404/409/422, malformed or expired jobs. Dead-lettered."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: Any = None,
        request_id: str | None = None,
        reason: str = "permanent_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.request_id = request_id
        self.reason = reason


class FinApiError(PermanentError):
    """Fin answered with a hopeless 4xx; ``body`` is Fin's error body."""


class JobExpiredError(PermanentError):
    """The job's expiry passed before it could reach Fin."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="expired")


class DeadlineExceededError(PermanentError):
    """Retrying would cross the job's total retry deadline (Fin's 5-minute de-dup window)."""

    def __init__(self, message: str, *, last_error: str | None = None) -> None:
        super().__init__(message, reason="deadline_exceeded")
        self.last_error = last_error

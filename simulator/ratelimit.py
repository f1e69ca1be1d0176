"""Intercom-style rate limiting: the per-minute quota split into fixed 10-second windows.

Windows are aligned to epoch multiples of the window length (``1487332510`` → ``1487332520``
like Intercom's examples). The window limit is ``per_minute // 6`` (floor: 1000/min → 166, as
one Intercom page says; another shows 167). The clock is injectable for tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome of one :meth:`FixedWindowLimiter.hit`."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The ``X-RateLimit-*`` headers (sent on authenticated responses only)."""
        return [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset_s).encode()),
        ]


class FixedWindowLimiter:
    """Counts calls per fixed window; not thread-safe (one event loop owns it)."""

    def __init__(
        self,
        per_minute: int,
        window_s: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.limit = max(1, per_minute * window_s // 60)
        self._clock = clock
        self._window_start = -1
        self._count = 0

    def reconfigure(self, per_minute: int, window_s: int) -> None:
        """Change the quota; the current window's count is kept."""
        self.window_s = window_s
        self.limit = max(1, per_minute * window_s // 60)

    def hit(self) -> Decision:
        """Count one call and say whether it is allowed."""
        now = self._clock()
        start = math.floor(now / self.window_s) * self.window_s
        if start != self._window_start:
            self._window_start = start
            self._count = 0
        reset = start + self.window_s
        if self._count >= self.limit:
            return Decision(False, self.limit, 0, reset)
        self._count += 1
        return Decision(True, self.limit, self.limit - self._count, reset)

    def message(self) -> str:
        """Intercom's 429 message, e.g. ``Exceeded rate limit of 166 in 10_seconds``."""
        return f"Exceeded rate limit of {self.limit} in {self.window_s}_seconds"

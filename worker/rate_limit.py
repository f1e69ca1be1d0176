"""Fleet-wide rate limiter over Redis (``rate_limit.lua`` of :mod:`fin_relay.contract.redisproto`):
fixed 10-second windows, learned caps, and the fleet-wide pauses after a 429 (until the reset)
and a 401 (until a probe succeeds or the token changes).

Celery's ``rate_limit`` task option is per worker and cannot keep a fleet under one quota.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from fin_relay.contract import redisproto
from fin_relay.contract.names import Names
from fin_relay.contract.redisproto import RATE_LIMIT, text
from fin_relay.worker.fin_client import RateLimitInfo

WINDOW_MS = 10_000
#: A call taken this close to a window's end counts in the next window too (see the Lua).
BOUNDARY_GUARD_MS = 250
#: When only a learned cap that may still rise blocks a call, wait this long, not the window.
SETTLE_MS = 100


def token_fingerprint(token: str) -> str:
    """A short hash identifying the token (never the token) stored with the auth pause."""
    return hashlib.sha256(b"fin-relay:" + token.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Acquired:
    """Result of :meth:`RateLimiter.acquire`: ``wait_ms == 0`` means go."""

    wait_ms: int
    why: str
    at_ms: int = 0  # Redis time of a granted slot
    window_s: int = 0  # the window it was granted in
    count: int = 0  # our count in that window, this call included
    #: ``time.monotonic()`` when this answer was decoded (to tell how stale a slot is)
    local_s: float = field(default_factory=time.monotonic, compare=False)

    @property
    def go(self) -> bool:
        return self.wait_ms <= 0

    @property
    def probe(self) -> bool:
        """This call is the fleet's one probe of a token that got a 401."""
        return self.why == "probe"


class RateLimiter:
    """Thin wrapper around the Lua script; every method is one atomic Redis call."""

    def __init__(
        self,
        client: redis.Redis,
        names: Names,
        *,
        budget: int,
        token_fp: str,
        probe_interval_s: float,
        window_ms: int = WINDOW_MS,
        guard_ms: int = BOUNDARY_GUARD_MS,
        settle_ms: int = SETTLE_MS,
    ) -> None:
        self._client = client
        self._names = names
        self.budget = budget
        self.token_fp = token_fp
        self.probe_interval_ms = int(probe_interval_s * 1000)
        self.window_ms = window_ms
        self.guard_ms = guard_ms
        self.settle_ms = settle_ms
        self._win_prefix = names.ratelimit_window(0).removesuffix("0")
        self._cap_prefix = names.ratelimit_cap(0).removesuffix("0")

    def _args(self, command: str, *extra: Any) -> list[Any]:
        return [command, self._win_prefix, self._cap_prefix, self.window_ms, *extra]

    def _keys(self, job_key: str = "") -> list[str]:
        return [self._names.ratelimit_pause, self._names.auth_pause, job_key]

    def acquire_call(
        self, job_key: str = "", grant_time_field: str = ""
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of "acquire" (for this script or the composed gate)."""
        args = self._args(
            "acquire",
            self.budget,
            self.token_fp,
            self.probe_interval_ms,
            grant_time_field,
            self.guard_ms,
            self.settle_ms,
        )
        return self._keys(job_key), args

    @staticmethod
    def parse_acquired(raw: list[Any]) -> Acquired:
        extra = [int(v) for v in raw[2:5]] + [0, 0, 0]
        return Acquired(int(raw[0]), text(raw[1]), extra[0], extra[1], extra[2])

    def acquire(self, job_key: str = "", grant_time_field: str = "") -> Acquired:
        """Take one call slot in the current window, or say how long to wait (ms).

        On "go", ``grant_time_field`` of the hash ``job_key`` is set to now (HSETNX) in the same
        atomic step: the worker records when it first sent a request whose fate may be unknown.
        """
        keys, args = self.acquire_call(job_key, grant_time_field)
        return self.parse_acquired(RATE_LIMIT(self._client, keys, args))

    def add_observe(self, pipe: Any, rate: RateLimitInfo, slot: Acquired | None) -> bool:
        """Queue the learning step for one response's headers on a pipeline (False: nothing).

        ``slot`` is the acquisition this call was sent under (``None``: Fin did not count the
        call, e.g. a 429). Every counted response is recorded: the learned cap of Fin's window
        is (our responses counted there) + (the lowest ``X-RateLimit-Remaining`` among them).
        """
        if rate.remaining is None or rate.reset_s is None or slot is None:
            return False
        args = self._args("observe", rate.remaining, rate.reset_s)
        RATE_LIMIT.queue(pipe, self._keys(), args)
        return True

    def stale(self, slot: Acquired, now_s: float | None = None) -> bool:
        """Would a request sent now with ``slot`` reach Fin in a window the slot does not
        cover? (The thread may have been held up between the grant and the send: GIL, the
        first connection.) Measured with the local monotonic clock from the grant's Redis time.
        """
        if not slot.at_ms:
            return False
        elapsed_ms = ((time.monotonic() if now_s is None else now_s) - slot.local_s) * 1000.0
        end_ms = slot.window_s * 1000 + self.window_ms
        if slot.at_ms >= end_ms - self.guard_ms:
            end_ms += self.window_ms  # it straddled: it holds a slot in the next window too
        return slot.at_ms + elapsed_ms >= end_ms - self.guard_ms

    def observe(self, rate: RateLimitInfo, slot: Acquired | None) -> None:
        pipe = self._client.pipeline(transaction=False)
        if self.add_observe(pipe, rate, slot):
            redisproto.execute(self._client, pipe)

    def pause(self, delay_ms: int) -> int:
        """After a 429: nobody in the fleet calls Fin for ``delay_ms``. Returns the pause end."""
        (until_ms,) = RATE_LIMIT(self._client, self._keys(), self._args("pause", max(1, delay_ms)))
        return int(until_ms)

    def auth_failed(self) -> bool:
        """After a 401: pause the fleet (True when this started a new pause)."""
        (fresh,) = RATE_LIMIT(
            self._client,
            self._keys(),
            self._args("auth_fail", self.token_fp, self.probe_interval_ms),
        )
        return bool(int(fresh))

    def add_auth_ok(self, pipe: Any) -> None:
        """Queue the clearing of an auth pause of this token (a call just succeeded)."""
        RATE_LIMIT.queue(pipe, self._keys(), self._args("auth_ok", self.token_fp))

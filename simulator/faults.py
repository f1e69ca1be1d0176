"""Fault injection per endpoint: latency, error rate, timeouts, dropped connections, forced
status queues and outage windows.

Endpoint keys are the operation names of ``fin_relay.simulator.spec.OPERATION_PATHS`` (``start``,
``reply``, ``ask``, ``escalate``, ``csat``, ``capabilities``, ``procedure_run``) or ``*`` for
every endpoint. An endpoint's own spec wins over ``*``.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from fin_relay.simulator.spec import OPERATION_PATHS

ENDPOINT_KEYS: frozenset[str] = frozenset({*OPERATION_PATHS, "*"})

LatencyDist = Literal["fixed", "uniform", "normal", "exponential"]

#: What the app should do instead of (or before) handling the call.
FaultAction = Literal["error", "timeout", "drop"]


@dataclass
class FaultSpec:
    """One endpoint's faults (all off by default).

    * ``latency_ms`` with ``latency_dist``: ``fixed`` (exactly), ``uniform`` (``latency_ms ±
      latency_jitter_ms``), ``normal`` (mean ``latency_ms``, stddev ``latency_jitter_ms``) or
      ``exponential`` (mean ``latency_ms``); never negative.
    * ``error_rate`` (0..1) answers ``error_status`` (default 503) as an Intercom error.list.
    * ``timeout_rate``: the call hangs ``timeout_ms`` and then the connection is closed.
    * ``drop_rate``: the connection is closed without any response.
    * ``queue``: forced outcomes for the next calls, e.g. ``[503, 503]`` or ``["drop"]``.
    * ``outage_s``: every call answers ``outage_status`` until that many seconds from now.
    """

    latency_ms: float = 0.0
    latency_dist: LatencyDist = "fixed"
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    timeout_rate: float = 0.0
    timeout_ms: float = 30_000.0
    drop_rate: float = 0.0
    queue: deque[int | str] = field(default_factory=deque)
    outage_until: float = 0.0
    outage_status: int = 503

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSpec:
        """Build from the control API / CLI JSON; ``ValueError`` names a bad key."""
        spec = cls()
        for key, value in data.items():
            if key == "queue":
                spec.queue = deque(_check_queue_item(v) for v in value)
            elif key == "outage_s":
                spec.outage_until = time.monotonic() + float(value)
            elif key == "latency_dist":
                if value not in ("fixed", "uniform", "normal", "exponential"):
                    raise ValueError(f"latency_dist: unknown distribution {value!r}")
                spec.latency_dist = value
            elif key in ("error_status", "outage_status"):
                setattr(spec, key, int(value))
            elif key in (
                "latency_ms",
                "latency_jitter_ms",
                "error_rate",
                "timeout_rate",
                "timeout_ms",
                "drop_rate",
            ):
                setattr(spec, key, float(value))
            else:
                raise ValueError(f"unknown fault field: {key}")
        return spec

    def to_dict(self) -> dict[str, Any]:
        """JSON view (``outage_s`` is the time left)."""
        return {
            "latency_ms": self.latency_ms,
            "latency_dist": self.latency_dist,
            "latency_jitter_ms": self.latency_jitter_ms,
            "error_rate": self.error_rate,
            "error_status": self.error_status,
            "timeout_rate": self.timeout_rate,
            "timeout_ms": self.timeout_ms,
            "drop_rate": self.drop_rate,
            "queue": list(self.queue),
            "outage_s": max(0.0, self.outage_until - time.monotonic()),
            "outage_status": self.outage_status,
        }

    def latency_s(self, rng: random.Random) -> float:
        """One latency sample in seconds."""
        mean = self.latency_ms
        if mean <= 0 and self.latency_jitter_ms <= 0:
            return 0.0
        if self.latency_dist == "uniform":
            value = rng.uniform(mean - self.latency_jitter_ms, mean + self.latency_jitter_ms)
        elif self.latency_dist == "normal":
            value = rng.gauss(mean, self.latency_jitter_ms)
        elif self.latency_dist == "exponential":
            value = rng.expovariate(1.0 / mean) if mean > 0 else 0.0
        else:
            value = mean
        return max(0.0, value) / 1000.0


def _check_queue_item(value: Any) -> int | str:
    if value in ("drop", "timeout"):
        return str(value)
    status = int(value)
    if not 100 <= status <= 599:
        raise ValueError(f"queue: not an HTTP status: {value!r}")
    return status


@dataclass(frozen=True, slots=True)
class Fault:
    """The decision for one call: wait ``delay_s``, then maybe act."""

    delay_s: float
    action: FaultAction | None = None
    status: int = 0
    hang_s: float = 0.0


NO_FAULT = Fault(0.0)


class FaultTable:
    """All endpoints' specs; :meth:`decide` is called once per authenticated API call."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._specs: dict[str, FaultSpec] = {}
        self._rng = rng if rng is not None else random.Random()

    def set(self, specs: dict[str, dict[str, Any]], replace: bool = True) -> None:
        """Install specs (``replace`` drops every endpoint not named)."""
        parsed: dict[str, FaultSpec] = {}
        for key, data in specs.items():
            if key not in ENDPOINT_KEYS:
                raise ValueError(f"unknown endpoint for faults: {key}")
            parsed[key] = FaultSpec.from_dict(data)
        if replace:
            self._specs = parsed
        else:
            self._specs.update(parsed)

    def clear(self) -> None:
        """Remove every fault."""
        self._specs = {}

    def to_dict(self) -> dict[str, Any]:
        """JSON view of every endpoint's spec."""
        return {key: spec.to_dict() for key, spec in self._specs.items()}

    def decide(self, endpoint: str) -> Fault:
        """What happens to one call of ``endpoint``."""
        spec = self._specs.get(endpoint)
        if spec is None:
            spec = self._specs.get("*")
            if spec is None:
                return NO_FAULT
        rng = self._rng
        delay = spec.latency_s(rng)
        if spec.queue:
            forced = spec.queue.popleft()
            if forced == "drop":
                return Fault(delay, "drop")
            if forced == "timeout":
                return Fault(delay, "timeout", hang_s=spec.timeout_ms / 1000.0)
            return Fault(delay, "error", status=int(forced))
        if spec.outage_until and time.monotonic() < spec.outage_until:
            return Fault(delay, "error", status=spec.outage_status)
        if spec.drop_rate and rng.random() < spec.drop_rate:
            return Fault(delay, "drop")
        if spec.timeout_rate and rng.random() < spec.timeout_rate:
            return Fault(delay, "timeout", hang_s=spec.timeout_ms / 1000.0)
        if spec.error_rate and rng.random() < spec.error_rate:
            return Fault(delay, "error", status=spec.error_status)
        return Fault(delay)

"""Rate limits as Intercom does them: fixed 10 s windows aligned to the epoch, headers, 429."""

from __future__ import annotations

import time

import httpx

from fin_relay.simulator.ratelimit import FixedWindowLimiter
from tests.simulator.helpers import client, example


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_limit_is_per_minute_floor_div_6_and_windows_align():
    clock = FakeClock(1487332507.3)
    limiter = FixedWindowLimiter(1000, clock=clock)
    assert limiter.limit == 166
    first = limiter.hit()
    assert (first.limit, first.remaining, first.reset_s) == (166, 165, 1487332510)
    for _ in range(165):
        assert limiter.hit().allowed
    denied = limiter.hit()
    assert not denied.allowed and denied.remaining == 0
    assert limiter.message() == "Exceeded rate limit of 166 in 10_seconds"
    clock.now = 1487332510.0  # the boundary: a new window
    fresh = limiter.hit()
    assert fresh.allowed and fresh.remaining == 165 and fresh.reset_s == 1487332520


def test_headers_429_and_window_boundary_over_http(fin_simulator):
    clock = FakeClock(1487332501.0)
    sim = fin_simulator(clock=clock, rate_limit_per_minute=18)  # 3 per 10 s window
    with client(sim, "Preview") as c:
        seen = [c.post("/fin/capabilities", json=example("capabilities_request")) for _ in range(4)]
        assert [r.status_code for r in seen] == [200, 200, 200, 429]
        assert [r.headers["x-ratelimit-remaining"] for r in seen] == ["2", "1", "0", "0"]
        assert {r.headers["x-ratelimit-limit"] for r in seen} == {"3"}
        assert {r.headers["x-ratelimit-reset"] for r in seen} == {"1487332510"}
        limited = seen[3]
        body = limited.json()
        documented = example("error_429")
        assert body["errors"][0]["code"] == documented["errors"][0]["code"]
        assert body["errors"][0]["message"] == "Exceeded rate limit of 3 in 10_seconds"
        assert body["request_id"] == limited.headers["x-request-id"]
        assert "retry-after" not in limited.headers  # Intercom documents none
        # Errors after auth also carry the headers (and count).
        clock.now = 1487332510.0
        bad = c.post("/fin/start", content=b"nope")
        assert bad.status_code == 400
        assert bad.headers["x-ratelimit-remaining"] == "2"
        assert bad.headers["x-ratelimit-reset"] == "1487332520"
    # No valid credentials: no rate-limit headers, not counted.
    anon = httpx.post(sim.base_url + "/fin/start", json={})
    assert anon.status_code == 401
    assert "x-ratelimit-limit" not in anon.headers
    log = sim.control.requests()
    assert [e["status"] for e in log] == [200, 200, 200, 429, 400, 401]


def test_retry_after_flag(fin_simulator):
    clock = FakeClock(1487332505.0)
    sim = fin_simulator(clock=clock, rate_limit_per_minute=6, retry_after=True)  # 1 per window
    with client(sim, "Preview") as c:
        c.post("/fin/capabilities", json=example("capabilities_request"))
        limited = c.post("/fin/capabilities", json=example("capabilities_request"))
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1


def test_real_clock_short_window_resets(fin_simulator):
    """With a 1 s window (tests only) the real clock crosses a boundary within about a second."""
    sim = fin_simulator(rate_limit_per_minute=60, rate_limit_window_s=1)  # 1 per 1 s window
    with client(sim, "Preview") as c:
        deadline = time.monotonic() + 10
        while True:  # the second call within one window is limited
            limited = c.post("/fin/capabilities", json=example("capabilities_request"))
            if limited.status_code == 429:
                break
            assert time.monotonic() < deadline
        assert limited.json()["errors"][0]["message"] == "Exceeded rate limit of 1 in 1_seconds"
        reset = int(limited.headers["x-ratelimit-reset"])
        while time.time() < reset:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        later = c.post("/fin/capabilities", json=example("capabilities_request"))
    assert later.status_code == 200  # the first call of a later window
    assert int(later.headers["x-ratelimit-reset"]) >= reset + 1

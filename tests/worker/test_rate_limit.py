"""The fleet-wide limiter's Lua against a real Redis (no mocks)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import redis

from fin_relay.contract.names import Names
from fin_relay.worker.fin_client import RateLimitInfo
from fin_relay.worker.rate_limit import Acquired, RateLimiter, token_fingerprint


def limiter(
    client: redis.Redis,
    budget: int = 5,
    window_ms: int = 1000,
    guard_ms: int = 0,
    token: str = "t1",
) -> RateLimiter:
    return RateLimiter(
        client,
        Names("t"),
        budget=budget,
        token_fp=token_fingerprint(token),
        probe_interval_s=0.5,
        window_ms=window_ms,
        guard_ms=guard_ms,
    )


def test_many_threads_never_exceed_budget_per_window(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True, max_connections=64)
    lim = limiter(client, budget=7, window_ms=500, guard_ms=50)
    granted: list[int] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 1.6

    def hammer() -> None:
        while time.monotonic() < stop_at:
            got = lim.acquire()
            if got.go:
                with lock:
                    granted.append(got.at_ms)
            else:
                assert got.why == "quota" and 0 < got.wait_ms <= 1000
                time.sleep(min(got.wait_ms, 20) / 1000)

    threads = [threading.Thread(target=hammer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    per_window = Counter(ms // 500 for ms in granted)
    assert len(per_window) >= 3
    assert max(per_window.values()) <= 7, per_window
    assert sum(per_window.values()) >= 7 * (len(per_window) - 1) - 7  # the budget is used


def test_boundary_guard_counts_a_late_call_in_both_windows(redis_client: redis.Redis) -> None:
    lim = limiter(redis_client, budget=3, window_ms=1000, guard_ms=1000)  # every call straddles
    got = lim.acquire()
    assert got.go
    start = got.at_ms // 1000
    win = Names("t").ratelimit_window
    assert redis_client.get(win(start)) == "1" and redis_client.get(win(start + 1)) == "1"


def test_observe_lowers_the_window_cap(redis_client: redis.Redis) -> None:
    lim = limiter(redis_client, budget=10, window_ms=10_000)
    got = lim.acquire()
    assert got.go
    reset_s = got.at_ms // 10_000 * 10 + 10
    assert got.window_s == reset_s - 10 and got.count == 1
    lim.observe(RateLimitInfo(limit=10, remaining=2, reset_s=reset_s), got)  # another app used 7
    grants = [lim.acquire() for _ in range(5)]
    assert [g.go for g in grants] == [True, True, False, False, False]
    assert grants[2].why == "quota"
    # a response counted by Fin in another window teaches nothing about this one
    lim.observe(RateLimitInfo(limit=10, remaining=0, reset_s=reset_s + 10), got)
    assert not lim.acquire().go
    assert redis_client.hget(Names("t").ratelimit_cap(reset_s - 10), "n") == "1"


def test_learned_cap_is_not_lowered_by_reordered_arrivals(redis_client: redis.Redis) -> None:
    # Fin counts our calls in another order than the one the slots were granted in: the
    # first-granted call may arrive 5th (remaining 5 of 10). No other app spent anything, so
    # once every response is in, the whole budget is usable again.
    lim = limiter(redis_client, budget=10, window_ms=10_000)
    slots = [lim.acquire() for _ in range(5)]
    assert all(s.go for s in slots)
    reset_s = slots[0].window_s + 10
    lim.observe(RateLimitInfo(limit=10, remaining=5, reset_s=reset_s), slots[0])
    # the estimate is 1 + 5 = 6 while 4 responses are still to come: wait briefly, not the window
    lim.acquire()
    waiting = lim.acquire()
    assert not waiting.go and waiting.why == "quota" and waiting.wait_ms <= lim.settle_ms
    for slot, remaining in zip(slots[1:], (9, 8, 7, 6), strict=True):
        lim.observe(RateLimitInfo(limit=10, remaining=remaining, reset_s=reset_s), slot)
    assert lim.acquire().go  # 5 + 5 = 10: room for the rest of the budget


def test_settled_learned_cap_waits_for_the_next_window(redis_client: redis.Redis) -> None:
    lim = limiter(redis_client, budget=10, window_ms=10_000)
    slot = lim.acquire()
    lim.observe(RateLimitInfo(limit=10, remaining=0, reset_s=slot.window_s + 10), slot)
    blocked = lim.acquire()
    assert not blocked.go and blocked.wait_ms > lim.settle_ms


def test_a_slot_held_past_the_window_end_is_stale(redis_client: redis.Redis) -> None:
    lim = limiter(redis_client, budget=10, window_ms=1000, guard_ms=100)
    start_ms = 5_000_000
    fresh = Acquired(0, "ok", at_ms=start_ms + 100, window_s=5000, count=1, local_s=100.0)
    assert not lim.stale(fresh, now_s=100.5)  # sent at +600 ms: still inside the window
    assert lim.stale(fresh, now_s=100.85)  # sent within the guard of the end
    straddled = Acquired(0, "ok", at_ms=start_ms + 950, window_s=5000, count=1, local_s=100.0)
    assert not lim.stale(straddled, now_s=100.3)  # it holds a slot in the next window too
    assert lim.stale(straddled, now_s=101.0)


def test_pause_after_429_stops_everyone_until_it_ends(redis_client: redis.Redis) -> None:
    a, b = limiter(redis_client), limiter(redis_client)
    a.pause(400)
    got = b.acquire()
    assert not got.go and got.why == "paused" and 0 < got.wait_ms <= 400
    a.pause(10)  # a shorter pause never shortens the current one
    assert not b.acquire().go
    time.sleep(0.45)
    assert b.acquire().go


def test_auth_pause_one_probe_per_interval_and_token_change_clears(
    redis_client: redis.Redis,
) -> None:
    a, b = limiter(redis_client), limiter(redis_client)
    assert a.auth_failed() is True
    assert a.auth_failed() is False
    held = b.acquire()
    assert not held.go and held.why == "auth"
    time.sleep(held.wait_ms / 1000 + 0.02)
    probe = b.acquire()
    assert probe.go and probe.probe
    assert not a.acquire().go  # only one probe per interval
    raw = redis_client.hgetall(Names("t").auth_pause)
    assert set(raw) == {"fp", "since_ms", "probe_at_ms"} and "t1" not in raw.values()
    other = limiter(redis_client, token="t2")  # a worker with the new token
    assert other.acquire().go
    assert not redis_client.exists(Names("t").auth_pause)


def test_auth_ok_clears_only_its_own_tokens_pause(redis_client: redis.Redis) -> None:
    a = limiter(redis_client)
    a.auth_failed()
    pipe = redis_client.pipeline()
    limiter(redis_client, token="zz").add_auth_ok(pipe)
    pipe.execute()
    assert redis_client.exists(Names("t").auth_pause)
    pipe = redis_client.pipeline()
    a.add_auth_ok(pipe)
    pipe.execute()
    assert not redis_client.exists(Names("t").auth_pause)

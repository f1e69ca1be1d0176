"""The sequencing and conversation-state Lua against a real Redis."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

import pytest
import redis

from fin_relay.contract import redisproto
from fin_relay.contract.conversation import read_state
from fin_relay.contract.jobs import prepare_replay
from fin_relay.contract.names import Names
from fin_relay.contract.settings import WorkerSettings, load
from fin_relay.worker.batching import Coalescer
from fin_relay.worker.calls import new_lease
from fin_relay.worker.gate import Gate
from fin_relay.worker.rate_limit import RateLimiter, token_fingerprint
from fin_relay.worker.runtime import Runtime
from fin_relay.worker.sequencing import Check, Lease, Sequencer
from tests.fixtures.worker import wait_until

N = Names("t")
#: The lease of one delivery in the tests that are not about leases (asking again as the same
#: delivery is allowed: the owner's own lease never blocks it).
ONE = Lease("w1#one")
LEASE_MS = 60_000


def check(
    seqr: Sequencer,
    job: str,
    *,
    wait_turn: bool = False,
    sequence: int | None = None,
    hold_max_ms: int = 60_000,
    ts: str | None = None,
    conv: str | None = "c1",
    lease: Lease | None = ONE,
    lease_ms: int = LEASE_MS,
    terminal: bool = False,
) -> Check:
    return seqr.check(
        job,
        conv,
        message_time=ts,
        sequence=sequence,
        wait_turn=wait_turn,
        hold_max_ms=hold_max_ms,
        lease=lease,
        lease_ms=lease_ms,
        terminal=terminal,
    )


def done(client: redis.Redis, seqr: Sequencer, job: str, seq: int) -> None:
    pipe = client.pipeline()
    seqr.add_done(pipe, job, "c1", seq)
    redisproto.execute(client, pipe)


def test_jobs_go_one_at_a_time_in_sequence(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    a, b, c = check(seqr, "a"), check(seqr, "b"), check(seqr, "c")
    assert (a.seq, b.seq, c.seq) == (1, 2, 3)
    assert a.go and b.decision == "wait_order" and c.decision == "wait_order"
    assert check(seqr, "b").seq == 2  # redelivery keeps its number
    done(redis_client, seqr, "a", 1)
    assert check(seqr, "b").go and not check(seqr, "c").go


def test_out_of_order_finish_is_skipped_by_next(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    for job in "abc":
        check(seqr, job)
    done(redis_client, seqr, "c", 3)  # e.g. an expired job dead-lettered early
    done(redis_client, seqr, "a", 1)
    assert redis_client.get(N.conversation_next("c1")) == "2"
    done(redis_client, seqr, "b", 2)
    assert redis_client.get(N.conversation_next("c1")) == "4"


def test_producer_sequence_is_used_and_stamped_ts_is_durable(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    second = check(seqr, "x", sequence=2, ts="2026-01-01T00:00:00.000Z")
    assert second.seq == 2 and second.decision == "wait_order"
    again = check(seqr, "x", sequence=2, ts="2026-01-01T00:00:09.999Z")
    assert again.ts == "2026-01-01T00:00:00.000Z"  # HSETNX: retries reuse the first stamp


def test_reply_waits_for_turn_and_is_skipped_when_escalated(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    pipe = redis_client.pipeline()
    seqr.add_call_state(pipe, "c1", "thinking", "2026-01-01T00:00:01.000Z", 0)
    redisproto.execute(redis_client, pipe)
    assert check(seqr, "r1", wait_turn=True).decision == "wait_turn"
    assert check(seqr, "r1", wait_turn=True, hold_max_ms=0).decision == "forced_turn"
    pipe = redis_client.pipeline()
    seqr.add_event_state(pipe, "c1", "awaiting_user_reply", "2026-01-01T00:00:03.000Z", 0)
    redisproto.execute(redis_client, pipe)
    assert check(seqr, "r1", wait_turn=True).go
    pipe = redis_client.pipeline()
    seqr.add_event_state(pipe, "c1", "escalated", "2026-01-01T00:00:04.000Z", 0)
    redisproto.execute(redis_client, pipe)
    assert check(seqr, "r1", wait_turn=True).decision == "escalated"


def test_hold_max_forces_order(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    check(seqr, "a")
    assert check(seqr, "b", hold_max_ms=0).decision == "forced_order"


def test_done_event_processed_before_call_state_is_not_overwritten(
    redis_client: redis.Redis,
) -> None:
    """The race: Fin's awaiting_user_reply webhook is processed before the worker writes the
    call's "thinking" state; the turn must stay finished."""
    seqr = Sequencer(redis_client, N)
    pipe = redis_client.pipeline()
    seqr.add_event_state(pipe, "c1", "awaiting_user_reply", "2026-01-01T00:00:05.000Z", 0)
    seqr.add_call_state(pipe, "c1", "thinking", "2026-01-01T00:00:01.000Z", 0)
    redisproto.execute(redis_client, pipe)
    state = read_state(redis_client, N.conversation_state("c1"), "c1")
    assert not state.turn_in_progress and state.status == "awaiting_user_reply"


def test_stale_done_event_of_previous_turn_does_not_end_current_turn(
    redis_client: redis.Redis,
) -> None:
    seqr = Sequencer(redis_client, N)
    pipe = redis_client.pipeline()
    seqr.add_call_state(pipe, "c1", "thinking", "2026-01-01T00:00:10.000Z", 0)
    seqr.add_event_state(pipe, "c1", "awaiting_user_reply", "2026-01-01T00:00:05.000Z", 0)
    redisproto.execute(redis_client, pipe)
    state = read_state(redis_client, N.conversation_state("c1"), "c1")
    assert state.turn_in_progress and state.status == "thinking"


def test_job_without_conversation_is_not_sequenced(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    first = check(seqr, "cap1", conv=None)
    assert first.go and first.seq == 0
    assert redis_client.keys("t:conv:*") == []


def test_dup_when_outcome_recorded(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    check(seqr, "a")
    redis_client.hset(N.job("a"), "outcome", "succeeded")
    assert check(seqr, "a").decision == "dup"


# --- one job id is one job: the lease ---------------------------------------------------------


def lease_fields(client: redis.Redis, job: str) -> dict[str, str]:
    return {k: v for k, v in client.hgetall(N.job(job)).items() if k.startswith("lease_")}


def test_concurrent_deliveries_of_one_job_one_goes_the_others_wait_lease(
    redis_url: str,
) -> None:
    """Eight deliveries of one job checked at the same moment from eight connections."""
    seqr = Sequencer(redis.Redis.from_url(redis_url, decode_responses=True), N)
    barrier = threading.Barrier(8)
    checks: dict[int, Check] = {}

    def deliver(i: int) -> None:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        mine = Sequencer(client, N)
        barrier.wait(5)
        checks[i] = check(mine, "j", lease=Lease(f"w{i}#d{i}"))
        client.close()

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(checks) == 8
    winners = [i for i, c in checks.items() if c.leased]
    assert len(winners) == 1 and checks[winners[0]].decision == "go"
    assert sorted(c.decision for c in checks.values()) == ["go"] + ["wait_lease"] * 7
    assert all(not c.leased for i, c in checks.items() if i != winners[0])
    assert all(c.seq == 1 for c in checks.values() if c.leased)  # the losers take no number
    fields = lease_fields(redis.Redis.from_url(redis_url, decode_responses=True), "j")
    assert fields["lease_owner"] == f"w{winners[0]}#d{winners[0]}"
    # the same delivery asking again keeps its lease (e.g. after an in-thread quota wait)
    again = check(seqr, "j", lease=Lease(f"w{winners[0]}#d{winners[0]}"))
    assert again.decision == "go" and again.leased


def _owner_in_a_forked_child() -> str:
    return new_lease(N, "w1@host").owner


def test_lease_owners_are_unique_per_delivery_thread_and_process() -> None:
    owners: list[str] = []
    lock = threading.Lock()

    def deliveries() -> None:
        mine = [new_lease(N, "w1@host") for _ in range(200)]
        with lock:
            owners.extend(lease.owner for lease in mine)

    threads = [threading.Thread(target=deliveries) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(owners)) == len(owners) == 1600
    lease = new_lease(N, "w1@host")
    assert lease.heartbeat == N.worker_heartbeat("w1@host")
    assert lease.owner.startswith(N.worker_heartbeat("w1@host") + "|")
    assert new_lease(N, None).heartbeat == ""  # no node name: the lease lives until it expires
    # a prefork child inherits the parent's counter and token: its owners still differ
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply(_owner_in_a_forked_child)
    assert child != new_lease(N, "w1@host").owner
    assert child.rsplit(".", 1)[0] != lease.owner.rsplit(".", 1)[0]


def test_release_lets_the_next_delivery_take_the_lease(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    first, retry = Lease("w1#first"), Lease("w1#retry")
    assert check(seqr, "j", lease=first).leased
    assert check(seqr, "j", lease=retry).decision == "wait_lease"
    assert not seqr.release("j", retry)  # only the holder frees it
    assert check(seqr, "j", lease=retry).decision == "wait_lease"
    pipe = redis_client.pipeline()
    seqr.add_release(pipe, "j", first)  # what a deferred delivery queues before re-publishing
    assert redisproto.execute(redis_client, pipe) == [[1]] and not first.held
    assert lease_fields(redis_client, "j") == {}
    taken = check(seqr, "j", lease=retry)
    assert taken.decision == "go" and taken.leased
    assert check(seqr, "j", lease=first).decision == "wait_lease"


def test_a_dead_owners_lease_is_free(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    heartbeat = N.worker_heartbeat("w1@host")
    redis_client.set(heartbeat, "{}", px=10_000)
    holder = Lease("w1#a", heartbeat=heartbeat)
    assert check(seqr, "j", lease=holder).leased
    assert lease_fields(redis_client, "j")["lease_hb"] == heartbeat
    assert check(seqr, "j", lease=Lease("w2#b")).decision == "wait_lease"
    redis_client.delete(heartbeat)  # the worker was killed: its heartbeat key expires
    taken = check(seqr, "j", lease=Lease("w2#b"))
    assert taken.decision == "go" and taken.leased


def test_a_lease_of_a_killed_incarnation_is_free_when_its_hostname_beats_again(
    redis_client: redis.Redis,
) -> None:
    """A worker restarted under the same hostname beats the same key with a new process id:
    the killed process's lease must not look alive for its whole expiry."""
    seqr = Sequencer(redis_client, N)
    heartbeat = N.worker_heartbeat("w1@host")
    redis_client.set(heartbeat, '{"owner": "w1@host:101:aaaa"}', px=10_000)
    holder = Lease(f"{heartbeat}|w1@host:101:aaaa|101.t.1", heartbeat=heartbeat)
    assert check(seqr, "j", lease=holder).leased
    other = Lease(f"{heartbeat}|w1@host:202:bbbb|202.t.1", heartbeat=heartbeat)
    assert check(seqr, "j", lease=other).decision == "wait_lease"  # the holder still beats
    redis_client.set(heartbeat, '{"owner": "w1@host:202:bbbb"}', px=10_000)  # restarted
    taken = check(seqr, "j", lease=other)
    assert taken.decision == "go" and taken.leased


def test_a_lease_without_a_heartbeat_lives_until_it_expires(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    # the owner's heartbeat key does not exist when the lease is taken: expiry only
    holder = Lease("w1#a", heartbeat=N.worker_heartbeat("not-beating@host"))
    assert check(seqr, "j", lease=holder, lease_ms=300).leased
    assert lease_fields(redis_client, "j")["lease_hb"] == ""
    other = Lease("w2#b")
    assert check(seqr, "j", lease=other).decision == "wait_lease"
    started = time.monotonic()
    taken = wait_until(
        lambda: (c := check(seqr, "j", lease=other)).leased and c, 5, "the lease to expire"
    )
    assert taken.decision == "go" and time.monotonic() - started > 0.1


def test_waiting_for_order_takes_no_lease_unless_terminal(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    assert check(seqr, "a", lease=Lease("w#a")).leased
    waiting = check(seqr, "b", lease=Lease("w#b1"))
    assert waiting.decision == "wait_order" and not waiting.leased
    assert lease_fields(redis_client, "b") == {}
    second = check(seqr, "b", lease=Lease("w#b2"))  # another copy: waits for order as well
    assert second.decision == "wait_order" and not second.leased
    # an expired copy records its outcome now, out of order: it takes the lease
    expired = check(seqr, "b", lease=Lease("w#b3"), terminal=True)
    assert expired.decision == "wait_order" and expired.leased and expired.seq == 2
    assert check(seqr, "b", lease=Lease("w#b1")).decision == "wait_lease"


def test_dup_after_outcome_whatever_the_lease(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    redis_client.set(N.worker_heartbeat("w1"), "{}", px=10_000)
    assert check(seqr, "j", lease=Lease("w1#a", heartbeat=N.worker_heartbeat("w1"))).leased
    redis_client.hset(N.job("j"), "outcome", "succeeded")  # the holder finished
    again = check(seqr, "j", lease=Lease("w2#b"))
    assert again.decision == "dup" and not again.leased
    assert lease_fields(redis_client, "j")["lease_owner"] == "w1#a"  # untouched


def test_a_replay_is_not_blocked_by_the_finished_runs_lease(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    redis_client.set(N.worker_heartbeat("w1"), "{}", px=10_000)  # the old holder still lives
    holder = Lease("w1#a", heartbeat=N.worker_heartbeat("w1"))
    assert check(seqr, "j", lease=holder, conv=None).leased
    redis_client.hset(N.job("j"), "outcome", "failed")
    pipe = redis_client.pipeline()
    prepare_replay(pipe, N, "j")
    redisproto.execute(redis_client, pipe)
    replayed = check(seqr, "j", lease=Lease("w2#replay"), conv=None)
    assert replayed.decision == "go" and replayed.leased
    assert lease_fields(redis_client, "j")["lease_run"] == "1"


def test_without_a_lease_a_check_respects_the_holder(redis_client: redis.Redis) -> None:
    seqr = Sequencer(redis_client, N)
    assert check(seqr, "j", lease=Lease("w1#a")).leased
    observer = check(seqr, "j", lease=None)
    assert observer.decision == "wait_lease" and not observer.leased


# --- the composed gate: the lease and the limiter in one script -------------------------------


def gate(client: redis.Redis, budget: int = 1, window_ms: int = 10_000) -> tuple[Gate, RateLimiter]:
    limiter = RateLimiter(
        client,
        N,
        budget=budget,
        token_fp=token_fingerprint("t"),
        probe_interval_s=1.0,
        window_ms=window_ms,
        guard_ms=0,
    )
    return Gate(client, N, Sequencer(client, N), limiter, Coalescer(client)), limiter


def gate_check(g: Gate, job: str, lease: Lease, *, terminal: bool = False, conv: str = "c1"):
    return g.check_and_acquire(
        job,
        conv,
        message_time=None,
        sequence=None,
        wait_turn=False,
        hold_max_ms=60_000,
        grant_time_field="ambiguous_since_ms",
        lease=lease,
        lease_ms=LEASE_MS,
        inline_max_ms=1000,
        terminal=terminal,
    )


def test_gate_releases_the_lease_when_the_job_must_be_re_published(
    redis_client: redis.Redis,
) -> None:
    g, limiter = gate(redis_client)
    limiter.pause(5_000)  # a 429 paused the fleet: the job is re-published, not slept
    first = Lease("w1#a")
    check_, acquired = gate_check(g, "j", first)
    assert check_.decision == "go" and acquired is not None and acquired.why == "paused"
    assert not check_.leased and not first.held
    assert lease_fields(redis_client, "j") == {}
    # its re-publication (another delivery) is not refused
    check_, _ = gate_check(g, "j", Lease("w1#retry"))
    assert check_.decision == "go"


def test_gate_keeps_the_lease_through_a_short_quota_wait_and_skips_slots_for_terminal(
    redis_client: redis.Redis,
) -> None:
    g, _limiter = gate(redis_client, budget=1, window_ms=500)  # waits shorter than 1 s
    check_, acquired = gate_check(g, "a", Lease("w1#a"), conv="c-a")
    assert acquired is not None and acquired.go and check_.leased
    holder = Lease("w1#b")
    check_, acquired = gate_check(g, "b", holder, conv="c-b")  # the window's budget is spent
    assert acquired is not None and acquired.why == "quota" and 0 < acquired.wait_ms < 1000
    # slept in the thread, not re-published: the lease stays with this delivery meanwhile
    assert check_.leased and holder.held
    assert gate_check(g, "b", Lease("w2#dup"), conv="c-b")[0].decision == "wait_lease"
    # a terminal delivery (expired job) takes the lease but no rate-limit slot
    check_, acquired = gate_check(g, "t", Lease("w1#t"), terminal=True, conv="c-t")
    assert check_.leased and acquired is None
    assert "ambiguous_since_ms" not in redis_client.hgetall(N.job("t"))


def test_a_gate_call_does_not_wait_behind_an_outcome_round_trip(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's gate calls (a job's last step before its call) have their own coalesced
    connection: an outcome round trip in flight, here one held up in Redis, does not delay
    them."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("FIN_API_TOKEN", "t")
    rt = Runtime.build(load(WorkerSettings))
    key = f"held-{uuid.uuid4().hex}"
    got: list[object] = []
    # an outcome round trip that Redis answers after 1 s, unless the key is pushed first
    held = threading.Thread(
        target=lambda: got.extend(rt.coalescer.execute([(("BLPOP", key, 1), {})]))
    )
    held.start()
    try:
        wait_until(
            lambda: any(c.get("cmd") == "blpop" for c in redis_client.client_list()),
            10,
            "the outcome round trip waiting in Redis",
        )
        check_, acquired = rt.gate.check_and_acquire(
            "j-gate",
            "c-gate",
            message_time=None,
            sequence=None,
            wait_turn=False,
            hold_max_ms=60_000,
            grant_time_field="ambiguous_since_ms",
            lease=Lease("w1#a"),
            lease_ms=LEASE_MS,
            inline_max_ms=1000,
        )
        assert check_.decision == "go" and acquired is not None and acquired.go
        redis_client.lpush(key, "pushed after the gate call returned")
    finally:
        held.join(10)
        rt.close()
    # the gate call returned while the outcome round trip was still waiting: the push ended it
    assert got == [(key, "pushed after the gate call returned")]

"""The sequencing and conversation-state Lua against a real Redis."""

from __future__ import annotations

import redis

from fin_relay.contract.conversation import read_state
from fin_relay.contract.names import Names
from fin_relay.worker.sequencing import Sequencer

N = Names("t")


def check(
    seqr: Sequencer,
    job: str,
    *,
    wait_turn: bool = False,
    sequence: int | None = None,
    hold_max_ms: int = 60_000,
    ts: str | None = None,
    conv: str | None = "c1",
):
    return seqr.check(
        job, conv, stamp_ts=ts, sequence=sequence, wait_turn=wait_turn, hold_max_ms=hold_max_ms
    )


def done(client: redis.Redis, seqr: Sequencer, job: str, seq: int) -> None:
    pipe = client.pipeline()
    seqr.add_done(pipe, job, "c1", seq)
    pipe.execute()


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
    pipe.execute()
    assert check(seqr, "r1", wait_turn=True).decision == "wait_turn"
    assert check(seqr, "r1", wait_turn=True, hold_max_ms=0).decision == "forced_turn"
    pipe = redis_client.pipeline()
    seqr.add_event_state(pipe, "c1", "awaiting_user_reply", "2026-01-01T00:00:03.000Z", 0)
    pipe.execute()
    assert check(seqr, "r1", wait_turn=True).go
    pipe = redis_client.pipeline()
    seqr.add_event_state(pipe, "c1", "escalated", "2026-01-01T00:00:04.000Z", 0)
    pipe.execute()
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
    pipe.execute()
    state = read_state(redis_client, N.conversation_state("c1"), "c1")
    assert not state.turn_in_progress and state.status == "awaiting_user_reply"


def test_stale_done_event_of_previous_turn_does_not_end_current_turn(
    redis_client: redis.Redis,
) -> None:
    seqr = Sequencer(redis_client, N)
    pipe = redis_client.pipeline()
    seqr.add_call_state(pipe, "c1", "thinking", "2026-01-01T00:00:10.000Z", 0)
    seqr.add_event_state(pipe, "c1", "awaiting_user_reply", "2026-01-01T00:00:05.000Z", 0)
    pipe.execute()
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

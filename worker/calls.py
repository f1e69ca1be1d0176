"""One attempt of a call job, as plain functions: validate → sequence → rate-limit → call Fin →
finish or defer. The Celery task (``tasks.py``) only turns a :class:`Defer` into
``task.retry(countdown=...)``.

A :class:`Defer` is a signal, not an error: the job is re-published with a countdown so it
holds no worker slot while it waits (for its turn, for quota, for a pause, or a backoff).

One job id is one job: every delivery runs under a :class:`Lease` (``sequencing.lua``). Only
the delivery holding the job's lease calls Fin or records an outcome; a second delivery of the
same job while the holder lives (two copies of one message in the queue) is deferred
(``wait_lease``) and later finds the outcome (``dup``). A delivery that is re-published without
an outcome releases the lease before it returns its :class:`Defer`, so its own re-publication
can take it.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fin_relay.contract import redisproto
from fin_relay.contract.errors import (
    AuthError,
    InvalidJobError,
    PermanentError,
    RateLimitedError,
    RetryableError,
)
from fin_relay.contract.fin_api import MESSAGE_OPERATIONS, complete_timestamps, format_fin_time
from fin_relay.contract.jobs import validate_task
from fin_relay.contract.names import TASK_OPERATIONS, Names
from fin_relay.worker import metrics, transport
from fin_relay.worker.fin_client import CallObservation
from fin_relay.worker.outcomes import JobContext, Outcome, finish
from fin_relay.worker.rate_limit import Acquired
from fin_relay.worker.retries import defer_delay_s, lease_s, longest_countdown_s, plan_retry
from fin_relay.worker.runtime import Runtime
from fin_relay.worker.sequencing import WAIT_DECISIONS, WAIT_LEASE, Check, Lease

log = logging.getLogger("fin_relay.worker.calls")

#: Waits for quota shorter than this are slept in the worker thread; longer ones re-publish.
INLINE_WAIT_MAX_MS = 1000
AMBIGUOUS_FIELD = "ambiguous_since_ms"

#: Lease owners are unique per delivery: pid, a token of this import and a counter (two threads
#: of one worker running two copies of one message get different owners; so do two prefork
#: children, which inherit the token and the counter from their parent but not its pid).
_PROCESS_TOKEN = uuid.uuid4().hex[:8]
_deliveries = itertools.count(1)


@dataclass(frozen=True)
class Defer:
    """Re-publish the job after ``countdown_s`` (reason: order, turn, quota, paused, auth,
    retry)."""

    countdown_s: float
    reason: str


def _now_ms() -> int:
    return int(time.time() * 1000)


def _countdown(runtime: Runtime, seconds: float) -> float:
    """Jittered, capped countdown: never past what is safe w.r.t. the visibility timeout."""
    jitter = runtime.rng.uniform(0.0, 0.05 + seconds * 0.05)
    return max(0.01, min(seconds + jitter, longest_countdown_s(runtime.settings)))


def new_lease(names: Names, hostname: str | None) -> Lease:
    """The lease owner of one delivery: the worker's heartbeat key (``hostname`` is the Celery
    node name the heartbeat uses; its expiry frees the lease of a killed worker) and a token
    unique to this delivery."""
    heartbeat = names.worker_heartbeat(hostname) if hostname else ""
    # This process's broker owner id (random per process, also in its heartbeat's JSON): a
    # worker restarted under the same hostname beats the same key, but not with this id, so
    # the killed incarnation's leases are free at once.
    incarnation = transport.ownership().current_owner() or "-"
    delivery = f"{os.getpid()}.{_PROCESS_TOKEN}.{next(_deliveries)}"
    return Lease(owner=f"{heartbeat or '-'}|{incarnation}|{delivery}", heartbeat=heartbeat)


def release_lease(runtime: Runtime, job_id: str, lease: Lease) -> None:
    """Free the job's lease if this delivery holds it (one round trip)."""
    pipe = runtime.redis.pipeline(transaction=False)
    runtime.sequencer.add_release(pipe, job_id, lease)
    runtime.coalescer.execute_pipeline(pipe)


def run_call(
    runtime: Runtime,
    task: str,
    job_id: str,
    kwargs: dict[str, Any],
    defers: int,
    *,
    lease: Lease | None = None,
    take_seq: int | None = None,
    delivery_tag: str = "",
) -> Defer | None:
    """Run one delivery of a call job; ``None`` when the job reached a terminal outcome (or
    another delivery already recorded one). ``lease``: this delivery's (a new one if None).
    ``take_seq``: the conversation sequence number the broker's take gave the job (the
    ``fin_relay_seq`` header); it wins over the job's ``relay.sequence``. ``delivery_tag``:
    the broker's tag of this delivery, acknowledged with the outcome where the broker allows
    (``transport.ack_commands``)."""
    lease = lease if lease is not None else new_lease(runtime.names, None)
    result = _run_call(
        runtime,
        task,
        job_id,
        kwargs,
        defers,
        lease=lease,
        take_seq=take_seq,
        delivery_tag=delivery_tag,
    )
    if result is not None and lease.held:
        # Re-published without an outcome and not released yet (the paths after a call
        # release it in their own round trip): the re-publication must be able to take it.
        release_lease(runtime, job_id, lease)
    return result


def _gate(
    runtime: Runtime,
    ctx: JobContext,
    lease: Lease,
    *,
    conversation_id: str | None,
    stamp: str | None = None,
    sequence: int | None = None,
    terminal: bool = False,
) -> tuple[Check, Acquired | None]:
    check, acquired = runtime.gate.check_and_acquire(
        ctx.job_id,
        conversation_id,
        message_time=stamp,
        sequence=sequence,
        wait_turn=ctx.operation == "reply",
        hold_max_ms=int(runtime.settings.fin_relay_sequence_hold_max_s * 1000),
        grant_time_field=AMBIGUOUS_FIELD,
        lease=lease,
        lease_ms=int(lease_s(runtime.settings) * 1000),
        inline_max_ms=INLINE_WAIT_MAX_MS,
        terminal=terminal,
    )
    ctx.job_hash, ctx.seq = check.job_fields, check.seq
    ctx.started_ms = int(check.job_fields.get("first_seen_ms") or ctx.started_ms)
    ctx.attempts = int(check.job_fields.get("attempts") or 0)
    return check, acquired


def _not_ours(runtime: Runtime, ctx: JobContext, check: Check, defers: int) -> Defer | None:
    """For a ``dup`` (None: acknowledged, nothing sent) or ``wait_lease`` (deferred) check."""
    if check.decision == WAIT_LEASE:
        log.info(
            "job=%s conv=%s op=%s another delivery of this job is in progress (%s): deferred",
            ctx.job_id,
            ctx.conversation_id or "-",
            ctx.operation,
            check.job_fields.get("lease_owner", "?"),
        )
        return Defer(_countdown(runtime, defer_delay_s(defers)), "lease")
    log.info(
        "job=%s conv=%s op=%s duplicate delivery: already %s, not sent again",
        ctx.job_id,
        ctx.conversation_id or "-",
        ctx.operation,
        check.job_fields.get("outcome"),
    )
    return None


def _run_call(
    runtime: Runtime,
    task: str,
    job_id: str,
    kwargs: dict[str, Any],
    defers: int,
    *,
    lease: Lease,
    take_seq: int | None,
    delivery_tag: str = "",
) -> Defer | None:
    operation = TASK_OPERATIONS.get(task, task)
    ctx = JobContext(
        task=task,
        job_id=job_id,
        kwargs=kwargs,
        operation=operation,
        job=None,
        body={k: v for k, v in kwargs.items() if k != "relay"},
        started_ms=_now_ms(),
        delivery_tag=delivery_tag,
    )
    try:
        ctx.job = validate_task(task, kwargs, runtime.versions)
    except InvalidJobError as exc:
        # Never sent, but its call.failed must be recorded once: take the lease first (no
        # sequencing, no rate-limit slot).
        check, _ = _gate(runtime, ctx, lease, conversation_id=None, terminal=True)
        if not check.leased:
            return _not_ours(runtime, ctx, check, defers)
        # its number (the take gave one to a conversation's job) is marked done with it
        ctx.seq = take_seq or 0
        finish(runtime, ctx, Outcome("failed", reason="invalid_job", error={"message": str(exc)}))
        return None
    ctx.body = ctx.job.body
    stamp = None
    if operation in MESSAGE_OPERATIONS and ctx.job.message_timestamp is None:
        # Neither timestamp field (validation completes one from the other): stamp durably.
        stamp = format_fin_time(datetime.now(UTC))
    # Open this thread's HTTP client (first use: TLS context, pool) before a slot is taken, so
    # the time between the grant and the send stays short.
    runtime.clients.get()
    # An expired job records call.failed without calling: it takes the lease (and no slot)
    # even while it would wait for its order or turn.
    expired = ctx.job.options.expired()
    check, acquired = _gate(
        runtime,
        ctx,
        lease,
        conversation_id=ctx.conversation_id,
        stamp=stamp,
        sequence=take_seq or ctx.job.options.sequence,
        terminal=expired,
    )
    if check.decision in ("dup", WAIT_LEASE):
        return _not_ours(runtime, ctx, check, defers)
    if check.leased:  # only the lease holder may record an outcome
        unknown = _earlier_attempt_too_old(runtime, check.job_fields)
        if unknown is not None:
            finish(
                runtime,
                ctx,
                Outcome("failed", reason="outcome_unknown", error={"message": unknown}),
            )
            return None
    if stamp is not None and check.ts:
        message = {k: v for k, v in ctx.body["message"].items() if k != "timestamp_ms"}
        ctx.body["message"] = complete_timestamps({**message, "timestamp": check.ts})
    return _after_check(
        runtime, ctx, check, defers, acquired=acquired, lease=lease, expired=expired
    )


def _earlier_attempt_too_old(runtime: Runtime, job_hash: dict[str, str]) -> str | None:
    """Why this delivery must not call Fin, or ``None``.

    ``ambiguous_since_ms`` is written (HSETNX) in the same script that grants the rate-limit
    slot, so before any request leaves, and it is cleared only when Fin answered "not
    accepted" (429, 401). A delivery that finds it older than the retry deadline is a job
    whose earlier request may have reached Fin that long ago (a worker killed mid-call, a
    redelivery after the visibility timeout): Fin de-duplicates a message only within 5
    minutes, so sending it again could make the user's message appear twice.
    """
    since = job_hash.get(AMBIGUOUS_FIELD)
    if not since:
        return None
    age_s = (_now_ms() - int(since)) / 1000.0
    deadline_s = runtime.settings.fin_relay_retry_deadline_s
    if age_s < deadline_s:
        return None
    return (
        f"an earlier attempt may have reached Fin {age_s:.0f} s ago, past "
        f"FIN_RELAY_RETRY_DEADLINE_S ({deadline_s:.0f} s): not sent again, since Fin "
        "de-duplicates a message only within 5 minutes; whether Fin got it is unknown "
        "(replay the dead letter to send it again on purpose)"
    )


def _after_check(
    runtime: Runtime,
    ctx: JobContext,
    check: Check,
    defers: int,
    *,
    acquired: Acquired | None,
    lease: Lease,
    expired: bool,
) -> Defer | None:
    assert ctx.job is not None
    if expired:  # terminal: the gate gave this delivery the lease whatever the order said
        finish(
            runtime,
            ctx,
            Outcome(
                "failed",
                reason="expired",
                error={"message": "relay.expires_at passed before the call"},
            ),
        )
        return None
    if check.decision == "escalated":
        finish(runtime, ctx, Outcome("skipped", reason="escalated"))
        return None
    if check.decision in WAIT_DECISIONS:
        return Defer(
            _countdown(runtime, defer_delay_s(defers)), check.decision.removeprefix("wait_")
        )
    if check.forced:
        log.warning(
            "job=%s conv=%s seq=%d next=%d %s: held %d ms, proceeding (hold max reached)",
            ctx.job_id,
            ctx.conversation_id,
            check.seq,
            check.next_seq,
            check.decision,
            check.waited_ms,
        )
        runtime.redis.hincrby(runtime.names.worker_metrics, f"sequence_{check.decision}", 1)
        metrics.sequence_overrun()
    return _acquire_and_call(runtime, ctx, acquired, lease)


def _acquire_and_call(
    runtime: Runtime, ctx: JobContext, acquired: Acquired | None, lease: Lease
) -> Defer | None:
    """Call Fin with the slot the gate took, or wait for one: short waits in this thread,
    longer ones by re-publishing the job (the slot is not held idle, nothing spins).

    The lease is held throughout (a go decision took it; the gate released it only with a
    wait this loop does not sleep, so the loop returns a Defer at once then)."""
    job_key = runtime.names.job(ctx.job_id)
    for _ in range(3):
        if acquired is None:
            acquired = runtime.limiter.acquire(job_key, AMBIGUOUS_FIELD)
        if acquired.go:
            if acquired.probe or not runtime.limiter.stale(acquired):
                return _call(runtime, ctx, acquired, lease)
            # Held up since the grant: the request would reach Fin in a window this slot does
            # not cover. Take a slot in the window it will land in (the old one stays spent).
            log.info("job=%s rate-limit slot went stale before sending; re-acquiring", ctx.job_id)
            acquired = None
            continue
        if acquired.wait_ms >= INLINE_WAIT_MAX_MS or acquired.why == "auth":
            break
        metrics.limiter_wait(acquired.wait_ms / 1000.0)
        time.sleep(acquired.wait_ms / 1000.0 + runtime.rng.uniform(0.0, 0.05))
        acquired = None
    if acquired is None or acquired.go:  # only stale slots: try again at once, re-published
        return Defer(_countdown(runtime, 0.0), "quota")
    metrics.limiter_wait(acquired.wait_ms / 1000.0)
    return Defer(_countdown(runtime, acquired.wait_ms / 1000.0), acquired.why)


def _call(runtime: Runtime, ctx: JobContext, slot: Acquired, lease: Lease) -> Defer | None:
    assert ctx.job is not None
    observed = CallObservation()
    was_ambiguous = ctx.job_hash.get(AMBIGUOUS_FIELD)
    ctx.attempts += 1
    try:
        reply = runtime.clients.get().post(ctx.job.path, ctx.body, observed, ctx.job.version)
    except RateLimitedError as exc:
        return _rate_limited(runtime, ctx, exc, observed, was_ambiguous, lease=lease)
    except AuthError as exc:
        return _auth_failed(runtime, ctx, exc, observed, was_ambiguous, lease=lease)
    except RetryableError as exc:
        return _retryable(runtime, ctx, exc, observed, slot, lease=lease)
    except PermanentError as exc:
        error = {
            "message": str(exc),
            "status": exc.status,
            "body": exc.body,
            "request_id": exc.request_id,
        }
        finish(
            runtime,
            ctx,
            Outcome(
                "failed",
                reason="fin_error",
                error=error,
                status=exc.status,
                request_id=exc.request_id,
                latency_ms=observed.latency_ms,
                rate=observed.rate,
                slot=slot,
            ),
        )
        return None
    finish(
        runtime,
        ctx,
        Outcome(
            "succeeded",
            response=reply.body,
            status=reply.status,
            request_id=reply.request_id,
            latency_ms=reply.latency_ms,
            rate=reply.rate,
            slot=slot,
        ),
    )
    return None


def _record_attempt(
    runtime: Runtime,
    ctx: JobContext,
    observed: CallObservation,
    *,
    failure: bool,
    clear_ambiguous: bool,
    slot: Acquired | None = None,
    release: Lease | None = None,
) -> int:
    """One round trip: count the attempt (and failure), learn from headers, and release the
    lease of a delivery about to be re-published. Returns failures."""
    job_key = runtime.names.job(ctx.job_id)
    pipe = runtime.redis.pipeline(transaction=False)
    pipe.hincrby(job_key, "attempts", 1)
    pipe.hincrby(job_key, "failures", 1 if failure else 0)
    if clear_ambiguous:
        pipe.hdel(job_key, AMBIGUOUS_FIELD)  # Fin answered "not accepted": nothing ambiguous yet
    runtime.limiter.add_observe(pipe, observed.rate, slot)
    if release is not None:
        runtime.sequencer.add_release(pipe, ctx.job_id, release)  # after everything else it records
    results = redisproto.execute(runtime.redis, pipe)
    return int(results[1])


def _rate_limited(
    runtime: Runtime,
    ctx: JobContext,
    exc: RateLimitedError,
    observed: CallObservation,
    was_ambiguous: str | None,
    *,
    lease: Lease,
) -> Defer:
    delay_s = exc.delay_s if exc.delay_s is not None else runtime.limiter.window_ms / 1000.0
    runtime.limiter.pause(int(delay_s * 1000) + 50)
    metrics.rate_limited()
    metrics.retry("rate_limited")
    _record_attempt(
        runtime, ctx, observed, failure=False, clear_ambiguous=was_ambiguous is None, release=lease
    )
    log.info(
        "job=%s conv=%s op=%s 429 from Fin: fleet paused %.2f s (request_id=%s)",
        ctx.job_id,
        ctx.conversation_id or "-",
        ctx.operation,
        delay_s,
        exc.request_id,
    )
    return Defer(_countdown(runtime, delay_s + 0.05), "rate_limited")


def _auth_failed(
    runtime: Runtime,
    ctx: JobContext,
    exc: AuthError,
    observed: CallObservation,
    was_ambiguous: str | None,
    *,
    lease: Lease,
) -> Defer:
    fresh = runtime.limiter.auth_failed()
    _record_attempt(
        runtime, ctx, observed, failure=False, clear_ambiguous=was_ambiguous is None, release=lease
    )
    if fresh:
        runtime.redis.hincrby(runtime.names.worker_metrics, "auth_pauses", 1)
        message = (
            "Fin answered 401: the API token is wrong or was regenerated. Every call "
            "is paused fleet-wide and every job kept; set a valid FIN_API_TOKEN."
        )
        log.error("%s (job=%s request_id=%s)", message, ctx.job_id, exc.request_id)
        _sentry_message(message)
    else:
        log.warning("job=%s auth probe failed (401): fleet stays paused", ctx.job_id)
    return Defer(_countdown(runtime, runtime.settings.fin_relay_auth_probe_interval_s), "auth")


def _retryable(
    runtime: Runtime,
    ctx: JobContext,
    exc: RetryableError,
    observed: CallObservation,
    slot: Acquired,
    *,
    lease: Lease,
) -> Defer | None:
    # The holder of the lease is the only writer of the job's counters: the failure count is
    # known before the round trip that records it, so that round trip can also release the
    # lease when the job is re-published (and keep it when the job is dead-lettered now).
    failures = int(ctx.job_hash.get("failures") or 0) + 1
    ambiguous = ctx.job_hash.get(AMBIGUOUS_FIELD)
    plan = plan_retry(
        failures=failures,
        hint_s=exc.delay_s,
        ambiguous_since_ms=int(ambiguous) if ambiguous else _now_ms() - int(observed.latency_ms),
        now_ms=_now_ms(),
        settings=runtime.settings,
        rng=runtime.rng,
    )
    release = None if plan.give_up else lease
    _record_attempt(
        runtime, ctx, observed, failure=True, clear_ambiguous=False, slot=slot, release=release
    )
    if plan.give_up:
        error = {
            "message": str(exc),
            "status": exc.status,
            "body": exc.body,
            "request_id": exc.request_id,
            "failures": failures,
        }
        finish(
            runtime,
            ctx,
            Outcome(
                "failed",
                reason=plan.reason,
                error=error,
                status=exc.status,
                request_id=exc.request_id,
                latency_ms=observed.latency_ms,
            ),
        )
        return None
    assert plan.delay_s is not None
    metrics.retry("retryable_error")
    log.info(
        "job=%s conv=%s op=%s retry %d in %.2f s: %s",
        ctx.job_id,
        ctx.conversation_id or "-",
        ctx.operation,
        failures,
        plan.delay_s,
        exc,
    )
    return Defer(_countdown(runtime, plan.delay_s), "retry")


def _sentry_message(message: str) -> None:
    try:
        import sentry_sdk

        if sentry_sdk.get_client().is_active():
            sentry_sdk.capture_message(message, level="error")
    except Exception:
        log.debug("sentry capture failed", exc_info=True)

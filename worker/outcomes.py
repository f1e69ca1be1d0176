"""Terminal outcomes of a call job, written in one round trip.

One pipeline records the outcome in the job hash, publishes the result envelope
(``{ns}:results`` + the conversation channel), dead-letters a failure, advances the
conversation's sequence, updates the conversation state after a successful call, learns from
Fin's rate-limit headers and, for a replayed job that now succeeded, removes its old dead
letter. The outcome is written last (Redis runs a pipeline in order), so "the job hash has an
outcome" means "it was published": a redelivered job with an outcome is acknowledged without
calling Fin again; a pipeline cut short re-publishes with the same envelope ids.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.jobs import DEAD_JOB, ValidatedJob, dead_letter, request_summary
from fin_relay.contract.names import CALL_FAILED, CALL_SKIPPED, CALL_SUCCEEDED
from fin_relay.contract.publish import add_publish
from fin_relay.worker import metrics
from fin_relay.worker.fin_client import RateLimitInfo
from fin_relay.worker.rate_limit import Acquired
from fin_relay.worker.runtime import Runtime

log = logging.getLogger("fin_relay.worker.jobs")

#: Operations whose success starts a Fin turn (the conversation state follows the response).
TURN_OPERATIONS = frozenset({"start", "reply", "ask", "procedure_run"})

_TYPES = {"succeeded": CALL_SUCCEEDED, "failed": CALL_FAILED, "skipped": CALL_SKIPPED}


@dataclass
class JobContext:
    """What the terminal step needs to know about one job."""

    task: str
    job_id: str
    kwargs: dict[str, Any]
    operation: str
    job: ValidatedJob | None
    body: dict[str, Any]
    job_hash: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    attempts: int = 0
    started_ms: int = 0
    #: the broker's delivery tag of this delivery ("" unknown): acked with the outcome
    delivery_tag: str = ""

    @property
    def conversation_id(self) -> str | None:
        value = self.body.get("conversation_id") or self.kwargs.get("conversation_id")
        return value if isinstance(value, str) and value else None

    @property
    def run(self) -> int:
        return int(self.job_hash.get("run") or 0)


@dataclass
class Outcome:
    """A terminal outcome: ``succeeded``, ``failed`` (dead-lettered) or ``skipped``."""

    kind: str
    reason: str | None = None
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    status: int | None = None
    request_id: str | None = None
    latency_ms: float = 0.0
    rate: RateLimitInfo = field(default_factory=RateLimitInfo)
    slot: Acquired | None = None  # the rate-limit slot the call was sent under


def _result_data(ctx: JobContext, outcome: Outcome) -> dict[str, Any]:
    options = ctx.job.options if ctx.job is not None else None
    data: dict[str, Any] = {
        "job_id": ctx.job_id,
        "task": ctx.task,
        "operation": ctx.operation,
        "attempts": ctx.attempts,
        "latency_ms": round(outcome.latency_ms, 1),
        "elapsed_ms": max(0, int(time.time() * 1000) - ctx.started_ms) if ctx.started_ms else 0,
        "metadata": options.metadata if options is not None else None,
        "correlation_id": options.correlation_id if options is not None else None,
        "request": request_summary(ctx.body),
    }
    if ctx.seq:
        data["seq"] = ctx.seq
    if outcome.reason is not None:
        data["reason"] = outcome.reason
    if outcome.response is not None:
        data["response"] = outcome.response
    if outcome.error is not None:
        data["error"] = outcome.error
    if outcome.status is not None:
        data["status"] = outcome.status
    if outcome.request_id is not None:
        data["request_id"] = outcome.request_id
    return data


def _queue_conversation(runtime: Runtime, pipe: Any, ctx: JobContext, outcome: Outcome) -> None:
    cid = ctx.conversation_id
    if cid is None:
        return
    if ctx.seq:
        runtime.sequencer.add_done(pipe, ctx.job_id, cid, ctx.seq)
    if outcome.kind == "succeeded" and ctx.operation in TURN_OPERATIONS and outcome.response:
        status = outcome.response.get("status")
        if isinstance(status, str):
            created = outcome.response.get("created_at_ms")
            runtime.sequencer.add_call_state(
                pipe, cid, status, created if isinstance(created, str) else None, _now_ms()
            )


def _now_ms() -> int:
    return int(time.time() * 1000)


def finish(runtime: Runtime, ctx: JobContext, outcome: Outcome) -> Envelope:
    """Record, publish and (for failures) dead-letter ``outcome`` in one transaction."""
    metrics.outcome(ctx.operation, outcome.kind, outcome.reason, outcome.latency_ms)
    metrics.quota(outcome.rate)
    names, maxlen = runtime.names, runtime.settings.fin_relay_stream_maxlen
    envelope = Envelope.now(
        id=f"{ctx.job_id}.{outcome.kind}.{ctx.run}",
        type=_TYPES[outcome.kind],
        conversation_id=ctx.conversation_id,
        data=_result_data(ctx, outcome),
    )
    job_key = names.job(ctx.job_id)
    # One MULTI/EXEC: the outcome (the marker a redelivery checks) and the published envelope
    # commit together, also across a Redis crash (AOF writes a transaction whole).
    pipe = runtime.redis.pipeline(transaction=True)
    add_publish(pipe, names, names.results, envelope, maxlen=maxlen)
    if outcome.kind == "failed":
        dead_letter(
            pipe,
            names,
            dead_id=ctx.job_id,
            envelope_id=f"{ctx.job_id}.dead.{ctx.run}",
            kind=DEAD_JOB,
            task=ctx.task,
            task_id=ctx.job_id,
            kwargs=ctx.kwargs,
            reason=outcome.reason or "failed",
            conversation_id=ctx.conversation_id,
            data={k: v for k, v in envelope.data.items() if k != "task"},
            maxlen=maxlen,
            record_entry=(job_key, "dead_entry"),  # before the outcome, like everything else
        )
    elif outcome.kind == "succeeded" and ctx.job_hash.get("dead_entry"):
        pipe.xdel(names.dead, ctx.job_hash["dead_entry"])
        pipe.delete(names.dead_payload(ctx.job_id))
        pipe.hdel(job_key, "dead_entry")
    _queue_conversation(runtime, pipe, ctx, outcome)
    runtime.limiter.add_observe(pipe, outcome.rate, outcome.slot)
    if outcome.slot is not None and outcome.slot.probe and outcome.kind == "succeeded":
        runtime.limiter.add_auth_ok(pipe)
    # Last (and in the same transaction): a recorded outcome means everything above ran (a
    # redelivered job with an outcome is acknowledged without a second call).
    pipe.hset(
        job_key,
        mapping={"outcome": outcome.kind, "finished_ms": _now_ms(), "attempts": ctx.attempts},
    )
    # one round trip, shared with other threads; the broker's ack too when it is this Redis
    runtime.commit(pipe, ctx.delivery_tag)
    log_outcome(ctx, outcome)
    return envelope


def log_outcome(ctx: JobContext, outcome: Outcome) -> None:
    """One grep-able line per job outcome (never the token or message bodies)."""
    level = logging.INFO if outcome.kind != "failed" else logging.WARNING
    log.log(
        level,
        "job=%s conv=%s op=%s outcome=%s attempts=%d latency_ms=%.1f seq=%s status=%s reason=%s"
        " request_id=%s",
        ctx.job_id,
        ctx.conversation_id or "-",
        ctx.operation,
        outcome.kind,
        ctx.attempts,
        outcome.latency_ms,
        ctx.seq or "-",
        outcome.status if outcome.status is not None else "-",
        outcome.reason or "-",
        outcome.request_id or "-",
    )

"""Every Redis key, stream and channel name, and the fixed Celery task and queue names.

The Redis layout is the contract between producer, worker and ingest, so it is built here
and nowhere else. Keys are prefixed with ``FIN_RELAY_NAMESPACE`` (default ``fin``) so several
deployments can share one Redis. Celery task and queue names are *not* namespaced: other
services hard-code them (the wire contract).
"""

from __future__ import annotations

from dataclasses import dataclass

# --- fixed Celery wire names (never namespaced) ---------------------------------------------

CALLS_QUEUE = "fin.calls"
EVENTS_QUEUE = "fin.events"

TASK_START = "fin.start"
TASK_REPLY = "fin.reply"
TASK_ASK = "fin.ask"
TASK_ESCALATE = "fin.escalate"
TASK_CSAT = "fin.csat"
TASK_CAPABILITIES = "fin.capabilities"
TASK_PROCEDURE_RUN = "fin.procedure_run"
TASK_EVENT = "fin.event"

#: operation name (as in ``fin_api.OPERATIONS``) -> Celery task name.
CALL_TASKS: dict[str, str] = {
    "start": TASK_START,
    "reply": TASK_REPLY,
    "ask": TASK_ASK,
    "escalate": TASK_ESCALATE,
    "csat": TASK_CSAT,
    "capabilities": TASK_CAPABILITIES,
    "procedure_run": TASK_PROCEDURE_RUN,
}
TASK_OPERATIONS: dict[str, str] = {task: op for op, task in CALL_TASKS.items()}

#: task name -> queue name.
TASK_QUEUES: dict[str, str] = {
    **dict.fromkeys(CALL_TASKS.values(), CALLS_QUEUE),
    TASK_EVENT: EVENTS_QUEUE,
}

# --- broker bookkeeping (Redis broker only; next to kombu's ``unacked`` keys, not namespaced) --


def broker_owners(unacked_key: str = "unacked") -> str:
    """Sorted set on the broker: every consuming worker process (owner id) -> the end of its
    lease (epoch ms, Redis's clock). A member whose lease ended is a dead consumer."""
    return f"{unacked_key}_owners"


def broker_owner(owner: str, unacked_key: str = "unacked") -> str:
    """Set on the broker: delivery tags one worker process took and has not acked or put back
    yet (a subset of kombu's ``unacked`` hash)."""
    return f"{unacked_key}_owner:{owner}"


# --- envelope types -------------------------------------------------------------------------

CALL_SUCCEEDED = "call.succeeded"
CALL_FAILED = "call.failed"
CALL_SKIPPED = "call.skipped"


@dataclass(frozen=True)
class Names:
    """Redis names for one namespace. Build once: ``Names(settings.namespace)``."""

    namespace: str = "fin"

    def __post_init__(self) -> None:
        if not self.namespace or any(c in self.namespace for c in " \t\r\n{}"):
            raise ValueError(f"invalid namespace {self.namespace!r}")

    def _k(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    # streams (each also a pub/sub channel of the same name)
    @property
    def events(self) -> str:
        """Stream and channel of every verified Fin event."""
        return self._k("events")

    @property
    def results(self) -> str:
        """Stream and channel of every call outcome."""
        return self._k("results")

    @property
    def dead(self) -> str:
        """Stream and channel of jobs and events that will not be retried."""
        return self._k("dead")

    def conversation_channel(self, conversation_id: str) -> str:
        """Pub/sub channel with the events and results of one conversation."""
        return self._k("conversation", conversation_id)

    @property
    def conversation_channel_pattern(self) -> str:
        return self._k("conversation", "*")

    # conversation state (worker sequencing, `conversation show`)
    def conversation_state(self, conversation_id: str) -> str:
        """Hash: last Fin status, turn in progress, escalated, timestamps."""
        return self._k("conv", conversation_id, "state")

    def conversation_seq(self, conversation_id: str) -> str:
        """Counter: the next sequence number handed to a job of this conversation."""
        return self._k("conv", conversation_id, "seq")

    def conversation_next(self, conversation_id: str) -> str:
        """Counter: the sequence number allowed to call Fin next."""
        return self._k("conv", conversation_id, "next")

    def conversation_done(self, conversation_id: str) -> str:
        """Sorted set: sequence numbers that finished ahead of ``next`` (so ``next`` can skip them)."""
        return self._k("conv", conversation_id, "done")

    # jobs
    def job(self, job_id: str) -> str:
        """Hash: durable per-job facts (sequence number, stamped timestamp, outcome)."""
        return self._k("job", job_id)

    def job_idempotency(self, job_id: str) -> str:
        """Marker set when a caller-chosen job id was first enqueued."""
        return self._k("jobid", job_id)

    def dead_payload(self, dead_id: str) -> str:
        """String: the original job/event (task, task_id, queue, kwargs) kept for replay.

        Dead-letter envelopes carry no attachment data; this key holds what replay needs.
        """
        return self._k("deadpayload", dead_id)

    # durable consumers (producer.consumer)
    def consumed(self, group: str) -> str:
        """Sorted set: envelope ids a consumer group already processed (score: epoch ms)."""
        return self._k("consumed", group)

    # webhook ingest
    def event_dedup(self, dedup_key: str) -> str:
        """Marker remembering one delivered event for the de-dup TTL."""
        return self._k("dedup", dedup_key)

    # fleet-wide rate limiter
    def ratelimit_window(self, window_start_s: int) -> str:
        """Counter of calls made in the 10-second window starting at ``window_start_s``."""
        return self._k("ratelimit", "window", str(window_start_s))

    def ratelimit_cap(self, window_start_s: int) -> str:
        """Budget learned from Fin's X-RateLimit-Remaining for one window."""
        return self._k("ratelimit", "cap", str(window_start_s))

    @property
    def ratelimit_pause(self) -> str:
        """Set after a 429: epoch ms until which nobody calls Fin."""
        return self._k("ratelimit", "pause")

    @property
    def auth_pause(self) -> str:
        """Set after a 401: the fleet holds every call until a probe succeeds."""
        return self._k("auth", "pause")

    @property
    def worker_heartbeat_prefix(self) -> str:
        return self._k("worker")

    def worker_heartbeat(self, hostname: str) -> str:
        """String (JSON, short TTL): a live worker's pid and last beat; set once it consumes."""
        return self._k("worker", hostname)

    @property
    def worker_metrics(self) -> str:
        """Hash of worker counters (e.g. ``sequence_hold_forced``, ``auth_pauses``)."""
        return self._k("metrics", "worker")

    def all_static(self) -> dict[str, str]:
        """Every fixed name (for docs and the namespace test)."""
        return {
            "events": self.events,
            "results": self.results,
            "dead": self.dead,
            "ratelimit_pause": self.ratelimit_pause,
            "auth_pause": self.auth_pause,
            "conversation_channel_pattern": self.conversation_channel_pattern,
        }

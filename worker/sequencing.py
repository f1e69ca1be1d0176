"""Per-conversation sequencing and race-free conversation state (``sequencing.lua``,
``conversation_state.lua`` of :mod:`fin_relay.contract.redisproto`).

Guarantee (see docs/worker.md): the calls of one conversation reach Fin one at a time, in
sequence order, across all workers; a reply waits until Fin finished the previous turn. The
sequence order is the broker's: with the Redis broker, the worker transport's take numbers each
call job as it hands it out (``fin_relay_seq``); with another broker, the Producer's number
(taken before it publishes, or ``relay.sequence``) or, for jobs without one, the order in which
workers first receive them.

The same check takes the job's **lease** (one job id is one job): of two deliveries of one job
alive at once (two copies of a message in the queue), only the lease holder calls Fin or
records an outcome; the other is told ``wait_lease`` (see ``sequencing.lua``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from fin_relay.contract.conversation import STATE_TTL_S, call_state_update, event_state_update
from fin_relay.contract.fin_api import parse_fin_time
from fin_relay.contract.names import Names
from fin_relay.contract.redisproto import CONVERSATION_STATE, SEQUENCING, text

GO_DECISIONS = frozenset({"go", "forced_order", "forced_turn"})
SEQ_KEY_COUNT = 5
#: Another live delivery of the same job holds its lease: defer, then see its outcome.
WAIT_LEASE = "wait_lease"
WAIT_DECISIONS = frozenset({"wait_order", "wait_turn", WAIT_LEASE})
#: Index of the lease owner in the "check" ARGV (1-based, as the Lua sees it).
CHECK_OWNER_ARG = 8
#: Index of the terminal flag in the "check" ARGV (1-based).
CHECK_TERMINAL_ARG = 11
#: Index of the ``leased`` flag in the "check" reply, and where the job hash's fields start
#: (0-based).
CHECK_LEASED_AT = 5
CHECK_FIELDS_AT = 6


@dataclass
class Lease:
    """One delivery's claim on its job: ``owner`` is unique per delivery (two threads of one
    worker running two copies of a message differ); ``heartbeat`` is the owner's worker
    heartbeat key (``names.worker_heartbeat``; "" = none), whose expiry frees the lease of a
    killed worker. ``held``: this delivery holds the lease now (as far as it knows)."""

    owner: str
    heartbeat: str = ""
    held: bool = False


@dataclass(frozen=True)
class Check:
    """Result of :meth:`Sequencer.check` for one job."""

    decision: str
    ts: str | None
    seq: int
    next_seq: int
    waited_ms: int
    job_fields: dict[str, str]
    leased: bool = False

    @property
    def go(self) -> bool:
        return self.decision in GO_DECISIONS

    @property
    def forced(self) -> bool:
        return self.decision.startswith("forced")


def fin_time_ms_arg(value: str | None) -> str:
    """Fin's ISO time as epoch ms for the Lua scripts ("" when absent or unparseable)."""
    if not value:
        return ""
    try:
        moment: datetime = parse_fin_time(value)
    except ValueError:
        return ""
    return str(int(moment.timestamp() * 1000))


class Sequencer:
    """Wraps the sequencing and conversation-state scripts."""

    def __init__(self, client: redis.Redis, names: Names, ttl_s: int = STATE_TTL_S) -> None:
        self._client = client
        self._names = names
        self._ttl_s = ttl_s

    def _keys(self, job_id: str, conversation_id: str | None) -> list[str]:
        n, cid = self._names, conversation_id or "-"
        return [
            n.job(job_id),
            n.conversation_seq(cid),
            n.conversation_next(cid),
            n.conversation_state(cid),
            n.conversation_done(cid),
        ]

    def check_call(
        self,
        job_id: str,
        conversation_id: str | None,
        *,
        message_time: str | None,
        sequence: int | None,
        wait_turn: bool,
        hold_max_ms: int,
        lease: Lease | None = None,
        lease_ms: int = 0,
        terminal: bool = False,
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the "check" command (for this script or the composed gate).

        ``lease``: take the job's lease for this delivery (``None``: take none, only report
        ``wait_lease`` when another delivery holds it); ``lease_ms``: its longest life;
        ``terminal``: this delivery records an outcome without calling Fin, so it takes the
        lease even when it would wait for its order or turn."""
        args: list[Any] = [
            "check",
            self._ttl_s,
            message_time or "",
            "" if sequence is None else sequence,
            "1" if wait_turn else "0",
            hold_max_ms,
            "1" if conversation_id else "0",
            lease.owner if lease is not None else "",
            lease.heartbeat if lease is not None else "",
            lease_ms,
            "1" if terminal else "0",
        ]
        return self._keys(job_id, conversation_id), args

    @staticmethod
    def parse_check(raw: list[Any]) -> Check:
        """Decode the "check" reply."""
        fields = [text(v) for v in raw[CHECK_FIELDS_AT:]]
        return Check(
            decision=text(raw[0]),
            ts=text(raw[1]) or None,
            seq=int(raw[2]),
            next_seq=int(raw[3]),
            waited_ms=int(raw[4]),
            job_fields=dict(zip(fields[::2], fields[1::2], strict=True)),
            leased=int(raw[CHECK_LEASED_AT]) == 1,
        )

    def check(
        self,
        job_id: str,
        conversation_id: str | None,
        *,
        message_time: str | None,
        sequence: int | None,
        wait_turn: bool,
        hold_max_ms: int,
        lease: Lease | None = None,
        lease_ms: int = 0,
        terminal: bool = False,
    ) -> Check:
        """Record the job (first-seen time, stamped timestamp, sequence) and say whether it may
        call Fin now, taking its lease for ``lease`` (see :meth:`check_call`). Also returns the
        job hash (one round trip for all of it)."""
        keys, args = self.check_call(
            job_id,
            conversation_id,
            message_time=message_time,
            sequence=sequence,
            wait_turn=wait_turn,
            hold_max_ms=hold_max_ms,
            lease=lease,
            lease_ms=lease_ms,
            terminal=terminal,
        )
        check = self.parse_check(SEQUENCING(self._client, keys, args))
        if lease is not None:
            lease.held = check.leased
        return check

    def add_release(self, pipe: Any, job_id: str, lease: Lease) -> None:
        """Queue "free the job's lease if ``lease`` holds it" on a pipeline (a delivery that
        ends without an outcome, before its job is re-published)."""
        SEQUENCING.queue(pipe, self._keys(job_id, None), ["release", self._ttl_s, lease.owner])
        lease.held = False

    def release(self, job_id: str, lease: Lease) -> bool:
        """Free the job's lease if ``lease`` holds it (True when it did)."""
        lease.held = False
        keys = self._keys(job_id, None)
        (freed,) = SEQUENCING(self._client, keys, ["release", self._ttl_s, lease.owner])
        return int(freed) == 1

    def add_done(self, pipe: Any, job_id: str, conversation_id: str, seq: int) -> None:
        """Queue "this sequence number finished" on a pipeline (``next`` skips past it)."""
        SEQUENCING.queue(pipe, self._keys(job_id, conversation_id), ["done", self._ttl_s, seq])

    def add_call_state(
        self, pipe: Any, conversation_id: str, status: str, created_at: str | None, now_ms: int
    ) -> None:
        """Queue the state update after a successful call (race-safe against webhooks)."""
        self._add_state(
            pipe, "call", conversation_id, call_state_update(status, now_ms), created_at
        )

    def add_event_state(
        self, pipe: Any, conversation_id: str, status: str, created_at: str | None, now_ms: int
    ) -> None:
        """Queue the state update for a Fin event reporting ``status``."""
        fields = event_state_update(status, now_ms, created_at)
        self._add_state(pipe, "event", conversation_id, fields, created_at)

    def _add_state(
        self,
        pipe: Any,
        mode: str,
        conversation_id: str,
        fields: dict[str, str],
        created_at: str | None,
    ) -> None:
        flat: list[str] = []
        for key, value in fields.items():
            flat += [key, value]
        CONVERSATION_STATE.queue(
            pipe,
            [self._names.conversation_state(conversation_id)],
            [mode, fin_time_ms_arg(created_at), self._ttl_s, *flat],
        )

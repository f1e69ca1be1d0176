"""Sequencing check and rate-limit acquire in one Redis round trip.

``sequencing.lua`` and ``rate_limit.lua`` (:mod:`fin_relay.contract.redisproto`) stay separate
scripts (each readable and tested on its own); this module composes them into one: each source
becomes a local Lua function taking its own KEYS/ARGV, and ``gate.lua`` runs the limiter only
when sequencing says the job may go (and the delivery is not a terminal one that records an
outcome without calling). That saves a round trip on every job (the worker's hot path is bound
by Redis round trips and CPU).

The job's lease (``sequencing.lua``) is taken by the sequencing check; when the limiter then
says the job must be re-published (a wait of at least ``inline_max_ms``, or the auth pause),
the same script releases it again, so such a deferral costs no extra round trip.

Composite script: KEYS = sequencing's 5 keys + the limiter's 3 keys; ARGV[1] = the number of
sequencing arguments n, ARGV[2] = inline_max_ms, ARGV[3..n+2] = sequencing's ARGV, the rest =
the limiter's ARGV. Returns sequencing's reply (its ``leased`` flag cleared when the lease was
released), plus (when it said go) the limiter's reply appended as ``"__rl__", wait_ms, why,
now_ms``.
"""

from __future__ import annotations

from string import Template
from typing import Any

import redis

from fin_relay.contract import redisproto
from fin_relay.contract.names import Names
from fin_relay.worker.batching import Coalescer
from fin_relay.worker.rate_limit import Acquired, RateLimiter
from fin_relay.worker.sequencing import (
    CHECK_FIELDS_AT,
    CHECK_LEASED_AT,
    CHECK_OWNER_ARG,
    CHECK_TERMINAL_ARG,
    GO_DECISIONS,
    SEQ_KEY_COUNT,
    Check,
    Lease,
    Sequencer,
)

MARK = "__rl__"


def _as_function(name: str, source: str) -> str:
    return f"local function {name}(KEYS, ARGV)\n{source}\nend\n"


#: Position of the ``leased`` flag in the "check" reply, 1-based as the Lua sees it.
LEASED_AT = CHECK_LEASED_AT + 1


def composite_source() -> str:
    """The Lua source of the composed gate script."""
    driver = Template(redisproto.source("gate.lua")).substitute(
        seq_key_count=SEQ_KEY_COUNT,
        go_decisions=", ".join(f"{d}=true" for d in sorted(GO_DECISIONS)),
        terminal_arg=CHECK_TERMINAL_ARG,
        leased_at=LEASED_AT,
        owner_arg=CHECK_OWNER_ARG,
        mark=MARK,
    )
    return (
        _as_function("sequencing", redisproto.SEQUENCING.source)
        + _as_function("rate_limit", redisproto.RATE_LIMIT.source)
        + driver
    )


GATE = redisproto.Script(composite_source(), "gate")


class Gate:
    """``check_and_acquire``: may this job call Fin now (taking its lease), and if so, take a
    rate-limit slot."""

    def __init__(
        self,
        client: redis.Redis,
        names: Names,
        sequencer: Sequencer,
        limiter: RateLimiter,
        coalescer: Coalescer,
    ) -> None:
        self._names = names
        self._coalescer = coalescer
        self._sequencer = sequencer
        self._limiter = limiter

    def check_and_acquire(
        self,
        job_id: str,
        conversation_id: str | None,
        *,
        message_time: str | None,
        sequence: int | None,
        wait_turn: bool,
        hold_max_ms: int,
        grant_time_field: str,
        lease: Lease,
        lease_ms: int,
        inline_max_ms: int,
        terminal: bool = False,
    ) -> tuple[Check, Acquired | None]:
        """One round trip: the sequencing check (taking ``lease`` when this delivery may call
        Fin or record an outcome) and, when it says go and the delivery is not ``terminal``,
        the limiter's acquire. A limiter wait of ``inline_max_ms`` or more (or the auth pause)
        releases the lease in the same script. Sets ``lease.held``."""
        seq_keys, seq_args = self._sequencer.check_call(
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
        rl_keys, rl_args = self._limiter.acquire_call(self._names.job(job_id), grant_time_field)
        keys = [*seq_keys, *rl_keys]
        args = [len(seq_args), inline_max_ms, *seq_args, *rl_args]
        # shares a round trip with the other threads' gate calls and outcomes
        raw: list[Any]
        (raw,) = self._coalescer.execute([(GATE.command(keys, args), {})])
        acquired = None
        if MARK in raw[CHECK_FIELDS_AT:]:
            at = len(raw) - 1 - raw[::-1].index(MARK)
            acquired = RateLimiter.parse_acquired(raw[at + 1 :])
            raw = raw[:at]
        check = Sequencer.parse_check(raw)
        lease.held = check.leased
        return check, acquired

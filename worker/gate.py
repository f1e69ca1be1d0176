"""Sequencing check and rate-limit acquire in one Redis round trip.

``sequencing.lua`` and ``rate_limit.lua`` stay separate files (each readable and tested on its
own); this module composes them into one script: each body becomes a local Lua function taking
its own KEYS/ARGV, and the limiter runs only when sequencing says the job may go. That saves a
round trip on every job (the worker's hot path is bound by Redis round trips and CPU).

Composite script: KEYS = sequencing's 5 keys + the limiter's 3 keys; ARGV[1] = the number of
sequencing arguments n, ARGV[2..n+1] = sequencing's ARGV, the rest = the limiter's ARGV.
Returns sequencing's reply, plus (when it said go) the limiter's reply appended as
``"__rl__", wait_ms, why, now_ms``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from fin_relay.contract.names import Names
from fin_relay.worker import lua
from fin_relay.worker.batching import Coalescer
from fin_relay.worker.rate_limit import Acquired, RateLimiter
from fin_relay.worker.sequencing import GO_DECISIONS, SEQ_KEY_COUNT, Check, Sequencer

_HERE = Path(__file__).parent
MARK = "__rl__"


def _as_function(name: str, source: str) -> str:
    return f"local function {name}(KEYS, ARGV)\n{source}\nend\n"


def composite_source() -> str:
    """The Lua source of the composed gate script."""
    go = ", ".join(f"{d}=true" for d in sorted(GO_DECISIONS))
    return (
        _as_function("sequencing", (_HERE / "sequencing.lua").read_text())
        + _as_function("rate_limit", (_HERE / "rate_limit.lua").read_text())
        + f"""
local n = tonumber(ARGV[1])
local seq_keys, rl_keys, seq_args, rl_args = {{}}, {{}}, {{}}, {{}}
for i = 1, {SEQ_KEY_COUNT} do seq_keys[i] = KEYS[i] end
for i = {SEQ_KEY_COUNT} + 1, #KEYS do rl_keys[#rl_keys + 1] = KEYS[i] end
for i = 2, n + 1 do seq_args[#seq_args + 1] = ARGV[i] end
for i = n + 2, #ARGV do rl_args[#rl_args + 1] = ARGV[i] end
local out = sequencing(seq_keys, seq_args)
local go = {{{go}}}
if go[out[1]] then
  local rl = rate_limit(rl_keys, rl_args)
  out[#out + 1] = '{MARK}'
  for i = 1, #rl do out[#out + 1] = rl[i] end
end
return out
"""
    )


class Gate:
    """``check_and_acquire``: may this job call Fin now, and if so, take a rate-limit slot."""

    def __init__(
        self,
        client: redis.Redis,
        names: Names,
        sequencer: Sequencer,
        limiter: RateLimiter,
        batch: Coalescer,
    ) -> None:
        self._names = names
        self._batch = batch
        self._sequencer = sequencer
        self._limiter = limiter
        self._script = lua.register(client, composite_source())

    def check_and_acquire(
        self,
        job_id: str,
        conversation_id: str | None,
        *,
        stamp_ts: str | None,
        sequence: int | None,
        wait_turn: bool,
        hold_max_ms: int,
        stamp_field: str,
    ) -> tuple[Check, Acquired | None]:
        seq_keys, seq_args = self._sequencer.check_call(
            job_id,
            conversation_id,
            stamp_ts=stamp_ts,
            sequence=sequence,
            wait_turn=wait_turn,
            hold_max_ms=hold_max_ms,
        )
        rl_keys, rl_args = self._limiter.acquire_call(self._names.job(job_id), stamp_field)
        keys, args = [*seq_keys, *rl_keys], [len(seq_args), *seq_args, *rl_args]
        # shares a round trip with the other threads' gate calls and outcomes
        raw: list[Any]
        (raw,) = self._batch.execute([(("EVALSHA", self._script.sha, len(keys), *keys, *args), {})])
        acquired = None
        if MARK in raw[5:]:
            at = len(raw) - 1 - raw[::-1].index(MARK)
            acquired = RateLimiter.parse_acquired(raw[at + 1 :])
            raw = raw[:at]
        return Sequencer.parse_check(raw), acquired

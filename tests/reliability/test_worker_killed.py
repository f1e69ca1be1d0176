"""Workers SIGKILLed mid-call, again and again, during a 500-job run on the default
configuration: every job reaches exactly one outcome, none reaches Fin twice.

Two worker processes share 500 ``fin.start`` jobs (one conversation each) against a simulator
subprocess answering after 300 ms, so at any moment both workers hold calls in flight. Every
~2 s for 15 s a random one of the two is SIGKILLed and a fresh one started in its place (as a
supervisor would; it is not waited for, so a worker may also die while starting). The workers
run on the product's defaults, visibility timeout 3,600 s included: a killed worker's unacked
jobs come back because its broker lease runs out (``fin_relay.worker.transport``, fix 4), and
every job must have its outcome within 180 s of the last kill.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import redis

from fin_relay.contract.names import broker_owners
from tests.fixtures.worker import WorkerProcess, enqueue_job, start_kwargs, wait_ready
from tests.reliability.helpers import NS, await_outcomes, report, result_counts, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(420)]

JOBS = 500
KILL_EVERY_S = 2.0
KILLING_FOR_S = 15.0
LATENCY_MS = 300
CONCURRENCY = 4  # 2 x 4 slots x 300 ms: >= 19 s of work, longer than the 15 s of kills
OUTCOMES_WITHIN_S = 180.0


def fin_side_duplicates(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Group the simulator's ``/fin/start`` log by (conversation, message timestamp)."""
    starts = [r for r in requests if r["endpoint"] == "start"]
    accepted: Counter[tuple[str, str]] = Counter()  # non-deduplicated 2xx: a real new message
    deduplicated: Counter[tuple[str, str]] = Counter()
    timestamps: dict[str, set[str]] = defaultdict(set)
    for r in starts:
        key = (r["conversation_id"], r["message_timestamp"])
        timestamps[r["conversation_id"]].add(r["message_timestamp"])
        if 200 <= r["status"] < 300:
            if r["deduplicated"]:
                deduplicated[key] += 1
            else:
                accepted[key] += 1
    return {
        "starts": starts,
        "accepted": accepted,
        "deduplicated": deduplicated,
        "timestamps": timestamps,
        "errors": [r for r in starts if not 200 <= r["status"] < 300],
    }


def test_sigkill_mid_call_repeatedly_loses_nothing_and_never_doubles_at_fin(
    redis_url: str,
    redis_client: redis.Redis,
    sim_process: Callable[..., Any],
    worker_procs: Callable[..., WorkerProcess],
) -> None:
    sim = sim_process(faults={"*": {"latency_ms": LATENCY_MS}})

    def start(wait: bool = True) -> WorkerProcess:
        return worker_procs(
            redis_url,
            base_url=sim.base_url,
            concurrency=CONCURRENCY,
            product_defaults=True,
            wait=wait,
        )

    live = [start(), start()]
    conversations = {}
    for i in range(JOBS):
        cid = f"kill-{i}"
        conversations[enqueue_job(redis_client, "fin.start", start_kwargs(cid), sequence=True)] = (
            cid
        )

    seed = random.randrange(2**32)
    rng = random.Random(seed)
    kills: list[dict[str, Any]] = []
    began = time.monotonic()
    next_kill = began + KILL_EVERY_S
    while next_kill - began <= KILLING_FOR_S:
        time.sleep(max(0.0, next_kill - time.monotonic()))  # the cadence, not a synchronisation
        done = sum(result_counts(redis_client)[0].values())
        if done >= JOBS:
            break
        victim = rng.choice(live)
        live.remove(victim)
        victim.kill()
        kills.append(
            {"at_s": round(time.monotonic() - began, 1), "pid": victim.pid, "results_before": done}
        )
        live.append(start(wait=False))  # a supervisor restarts it
        next_kill += KILL_EVERY_S
    last_kill = time.monotonic()
    for worker in live:
        wait_ready(worker, redis_url, 60)
    live_owners = {
        json.loads(redis_client.get(NS.worker_heartbeat(w.hostname)) or "{}")["owner"] for w in live
    }

    first_at = await_outcomes(redis_client, set(conversations), OUTCOMES_WITHIN_S)
    missing = set(conversations) - set(first_at)
    after_last_kill_s = max(first_at.values(), default=last_kill) - last_kill

    # Nothing left that the broker could deliver again (a second outcome would come from
    # there), and every killed worker's lease was reaped: only the live workers hold one.
    def settled() -> bool:
        return (
            redis_client.llen("fin.calls") == 0
            and redis_client.hlen("unacked") == 0
            and set(redis_client.zrange(broker_owners(), 0, -1)) == live_owners
        )

    if not missing:
        wait_for(settled, 60, "the broker drained and the dead workers' leases reaped")
    succeeded, types = result_counts(redis_client)
    fin = fin_side_duplicates(sim.control.requests())
    redundant = sum(fin["deduplicated"].values())
    report(
        "test_worker_killed::test_sigkill_mid_call_repeatedly_loses_nothing_and_never_doubles_at_fin",
        jobs=JOBS,
        configuration="defaults (visibility timeout 3600 s)",
        seed=seed,
        kills=len(kills),
        kill_log=kills,
        missing_outcomes=len(missing),
        outcomes_after_last_kill_s=round(after_last_kill_s, 1),
        succeeded_jobs=len(succeeded),
        result_types=dict(types),
        fin_start_requests=len(fin["starts"]),
        new_messages_at_fin=sum(fin["accepted"].values()),
        absorbed_by_fin_dedup=redundant,
        messages_sent_more_than_once=len(fin["deduplicated"]),
        fin_errors=len(fin["errors"]),
    )

    assert not missing, f"{len(missing)} job(s) without an outcome {OUTCOMES_WITHIN_S} s after"
    assert len(live_owners) == len(live)  # one owner id per process
    assert len(kills) >= 5, f"the run ended before 5 kills landed: {kills}"
    # Every job completed, exactly once on the results stream, and nothing else was published.
    assert set(succeeded) == set(conversations)
    assert all(count == 1 for count in succeeded.values()), succeeded.most_common(3)
    assert dict(types) == {"call.succeeded": JOBS}
    # Fin saw each message (conversation, timestamp) as new exactly once; every other request
    # for it carried the same timestamp and was absorbed by Fin's de-duplication.
    assert fin["errors"] == []
    assert set(fin["accepted"]) == {
        (cid, ts) for cid, tss in fin["timestamps"].items() for ts in tss
    }
    assert all(count == 1 for count in fin["accepted"].values()), fin["accepted"].most_common(3)
    assert all(len(tss) == 1 for tss in fin["timestamps"].values())
    assert set(fin["timestamps"]) == set(conversations.values())
    # Whatever the kills interrupted reached Fin again only as a de-duplicated resend.
    assert len(fin["starts"]) == JOBS + redundant
    assert redundant >= 1, "no kill landed after a request reached Fin: the test proved nothing"

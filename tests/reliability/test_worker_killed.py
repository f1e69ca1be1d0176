"""Workers SIGKILLed mid-call, repeatedly, during a 500-job run: no job lost, none sent twice.

Two worker processes share 500 ``fin.start`` jobs (one conversation each) against a simulator
subprocess answering after 200 ms, so at any moment a worker holds calls in flight. Every
~2.5 s one worker is killed with SIGKILL (4 times) and a fresh one started in its place. The
visibility timeout is 10 s (consistent with the worker's own check: it must exceed the longest
countdown, 1 s, plus the task time limit, 5 s, which exceeds connect + read, 1 + 3 s).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.fixtures.worker import enqueue_job, start_kwargs
from tests.reliability.helpers import report, result_counts, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

JOBS = 500
KILLS = 4
KILL_EVERY_S = 2.5
LATENCY_MS = 200
CONCURRENCY = 4  # 2 x 4 slots x 200 ms: the run lasts >= 12.5 s, long enough for every kill

SHORT_VISIBILITY = {
    "FIN_RELAY_VISIBILITY_TIMEOUT_S": "10",
    "FIN_RELAY_TASK_TIME_LIMIT_S": "5",
    "FIN_RELAY_CONNECT_TIMEOUT_S": "1",
    "FIN_RELAY_READ_TIMEOUT_S": "3",
    "FIN_RELAY_BACKOFF_BASE_S": "0.2",
    "FIN_RELAY_BACKOFF_MAX_S": "1.0",
    "FIN_RELAY_MAX_ATTEMPTS": "10",
}


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
    worker_procs: Callable[..., Any],
) -> None:
    sim = sim_process(faults={"*": {"latency_ms": LATENCY_MS}})
    start = lambda: worker_procs(  # noqa: E731
        redis_url, base_url=sim.base_url, concurrency=CONCURRENCY, env=SHORT_VISIBILITY
    )
    live = [start(), start()]
    conversations = {}
    for i in range(JOBS):
        cid = f"kill-{i}"
        conversations[enqueue_job(redis_client, "fin.start", start_kwargs(cid), sequence=True)] = (
            cid
        )

    kills: list[dict[str, Any]] = []
    next_kill = time.monotonic() + KILL_EVERY_S
    for k in range(KILLS):
        time.sleep(max(0.0, next_kill - time.monotonic()))  # the cadence, not a synchronisation
        done = sum(result_counts(redis_client)[0].values())
        if done >= JOBS - 20:
            break  # too little left for a kill to land mid-call
        victim = live.pop(0)
        victim.kill()
        next_kill = time.monotonic() + KILL_EVERY_S
        kills.append({"kill": k + 1, "pid": victim.pid, "results_before": done})
        live.append(start())  # capacity remains: a supervisor would restart it

    wait_for(
        lambda: len(result_counts(redis_client)[0]) >= JOBS,
        240,
        f"{JOBS} call.succeeded results",
        step_s=0.5,
    )
    succeeded, types = result_counts(redis_client)
    fin = fin_side_duplicates(sim.control.requests())
    redundant = sum(fin["deduplicated"].values())
    report(
        "test_worker_killed::test_sigkill_mid_call_repeatedly_loses_nothing_and_never_doubles_at_fin",
        jobs=JOBS,
        kills=len(kills),
        kill_log=kills,
        succeeded_jobs=len(succeeded),
        result_types=dict(types),
        fin_start_requests=len(fin["starts"]),
        new_messages_at_fin=sum(fin["accepted"].values()),
        absorbed_by_fin_dedup=redundant,
        messages_sent_more_than_once=len(fin["deduplicated"]),
        fin_errors=len(fin["errors"]),
    )

    assert len(kills) >= 3, f"the run ended before 3 kills landed: {kills}"
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

from __future__ import annotations

import pytest

from fin_relay.contract import names
from fin_relay.contract.names import Names


@pytest.mark.parametrize("ns", ["fin", "staging-eu"])
def test_every_redis_name_carries_the_namespace(ns: str) -> None:
    n = Names(ns)
    built = [
        *n.all_static().values(),
        n.conversation_channel("c1"),
        n.conversation_state("c1"),
        n.conversation_seq("c1"),
        n.conversation_next("c1"),
        n.job("j1"),
        n.job_idempotency("j1"),
        n.event_dedup("d1"),
        n.ratelimit_window(1700000000),
        n.ratelimit_cap(1700000000),
    ]
    # every public name-building member is covered above
    members = {a for a in dir(n) if not a.startswith("_")} - {"namespace", "all_static"}
    assert len(built) >= len(members) - 1
    for name in built:
        assert name.startswith(f"{ns}:"), name
    assert len(set(built)) == len(built)


def test_default_names_match_design() -> None:
    n = Names()
    assert (n.events, n.results, n.dead) == ("fin:events", "fin:results", "fin:dead")
    assert n.conversation_channel("ext-123") == "fin:conversation:ext-123"


def test_celery_names_are_fixed_not_namespaced() -> None:
    assert names.CALLS_QUEUE == "fin.calls" and names.EVENTS_QUEUE == "fin.events"
    assert names.CALL_TASKS == {
        "start": "fin.start",
        "reply": "fin.reply",
        "ask": "fin.ask",
        "escalate": "fin.escalate",
        "csat": "fin.csat",
        "capabilities": "fin.capabilities",
        "procedure_run": "fin.procedure_run",
    }
    assert names.TASK_QUEUES["fin.event"] == "fin.events"
    assert all(q == "fin.calls" for t, q in names.TASK_QUEUES.items() if t != "fin.event")


def test_bad_namespace_rejected() -> None:
    with pytest.raises(ValueError):
        Names("")

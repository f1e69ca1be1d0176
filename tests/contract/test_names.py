from __future__ import annotations

import pytest

from fin_relay.contract import names
from fin_relay.contract.names import Names


@pytest.mark.parametrize("ns", ["fin", "staging-eu"])
def test_every_redis_name_carries_the_namespace(ns: str) -> None:
    """Every public name builder of Names, found by introspection, yields a namespaced name."""
    n = Names(ns)
    built: dict[str, str] = {}
    for attr in dir(Names):
        if attr.startswith("_") or attr in ("namespace", "all_static"):
            continue
        member = getattr(Names, attr)
        if isinstance(member, property):
            built[attr] = getattr(n, attr)
        elif callable(member):
            arg = 1700000000 if "window" in attr or "cap" in attr else "x1"
            built[attr] = getattr(n, attr)(arg)
    assert len(built) >= 15
    for attr, name in built.items():
        assert name.startswith(f"{ns}:"), (attr, name)
    assert len(set(built.values())) == len(built), "two builders give the same name"


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

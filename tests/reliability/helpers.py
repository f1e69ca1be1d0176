"""Shared helpers of the reliability suite (no fixtures here: see ``conftest.py``)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.fin_api import format_fin_time
from fin_relay.contract.names import CALL_SUCCEEDED, Names
from tests.fixtures.worker import wait_until

#: ``FIN_RELAY_RELIABILITY_FULL=1``: the long versions (5-minute load, RSS asserted, everysec).
FULL = os.environ.get("FIN_RELAY_RELIABILITY_FULL") == "1"

NS = Names("fin")

#: Where each test appends its figures (one JSON line per test), for docs/guarantees.md.
REPORT_PATH = Path(
    os.environ.get("FIN_RELAY_RELIABILITY_REPORT", "/tmp/fin-relay-reliability.jsonl")
)


def report(test: str, **figures: Any) -> None:
    """Print the figures of one run and append them to ``REPORT_PATH`` (best effort)."""
    line = json.dumps({"test": test, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures})
    print(f"\nRELIABILITY {line}")
    try:
        with REPORT_PATH.open("a") as handle:
            handle.write(line + "\n")
    except OSError:
        pass


def now_iso() -> str:
    """Fin's time format, now."""
    return format_fin_time(datetime.now(UTC))


def fin_replied(
    conversation_id: str, message_id: str, body: str = "Here is your answer"
) -> dict[str, Any]:
    """A valid ``fin_replied`` event (2.15 shape) whose de-dup key is ``msg_<message_id>``."""
    at = now_iso()
    return {
        "event_name": "fin_replied",
        "conversation_id": conversation_id,
        "user_id": "user-1",
        "message": {"id": message_id, "author": "fin", "body": body, "timestamp_ms": at},
        "status": "awaiting_user_reply",
        "created_at_ms": at,
    }


def event_id_of(message_id: str) -> str:
    """The ingest's de-dup key (= published envelope id) of a ``fin_replied`` with that id."""
    return f"msg_{message_id}"


def stream_ids(client: redis.Redis, stream: str) -> list[str]:
    """Envelope ids of every entry on ``stream`` (with repeats: one per entry)."""
    ids: list[str] = []
    last = "-"
    while True:
        batch = client.xrange(stream, min=last, max="+", count=5000)
        if last != "-" and batch and batch[0][0] == last:
            batch = batch[1:]
        if not batch:
            return ids
        for _entry_id, fields in batch:
            ids.append(Envelope.from_stream_fields(fields).id)
        last = batch[-1][0]


def result_counts(client: redis.Redis) -> tuple[Counter[str], Counter[str]]:
    """(``call.succeeded`` count per job id, count per result type) on ``{ns}:results``."""
    succeeded: Counter[str] = Counter()
    types: Counter[str] = Counter()
    for _entry_id, fields in client.xrange(NS.results):
        env = Envelope.from_stream_fields(fields)
        types[env.type] += 1
        if env.type == CALL_SUCCEEDED:
            succeeded[str(env.data.get("job_id"))] += 1
    return succeeded, types


def await_outcomes(
    client: redis.Redis, jobs: set[str], timeout_s: float, stream: str = NS.results
) -> dict[str, float]:
    """Read ``stream`` from its start (``XREAD BLOCK``: each outcome is awaited, not polled)
    until every job of ``jobs`` has an outcome or ``timeout_s`` passed; -> the monotonic time
    at which each job's first outcome was read."""
    first_at: dict[str, float] = {}
    last_id = "0-0"
    deadline = time.monotonic() + timeout_s
    while not jobs <= set(first_at):
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            break
        for _stream, entries in (
            client.xread({stream: last_id}, block=int(min(1, left_s) * 1000) or 1) or []
        ):
            for entry_id, fields in entries:
                last_id = entry_id
                job = str(Envelope.from_stream_fields(fields).data.get("job_id"))
                first_at.setdefault(job, time.monotonic())
    return first_at


def broker_drained(client: redis.Redis) -> bool:
    """Nothing waiting on the queues and nothing delivered-but-unacknowledged (kombu's hash)."""
    return (
        client.llen("fin.events") == 0
        and client.llen("fin.calls") == 0
        and client.hlen("unacked") == 0
    )


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``/proc``), or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_for(predicate: Any, timeout_s: float, what: str, step_s: float = 0.2) -> Any:
    """Poll ``predicate`` until truthy (bounded); ``AssertionError`` naming ``what`` otherwise."""
    try:
        return wait_until(predicate, timeout_s, what, step_s)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None

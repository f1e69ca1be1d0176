"""``fin-relay conversation show ID``: one conversation's state as fin-relay last saw it.

Exit codes (``fin_relay.clio``): 0 shown; 1 fin-relay has no state for that conversation (with
``--json`` the empty state is still printed); 2 usage or configuration error; 3 Redis
unavailable.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from fin_relay.clio import EXIT_OK, EXIT_PROBLEM, EXIT_UNAVAILABLE, pipe_safe
from fin_relay.contract.conversation import ConversationState
from fin_relay.contract.errors import BrokerUnavailableError
from fin_relay.contract.settings import ProducerSettings, load
from fin_relay.producer.enqueue import Producer


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="last Fin status, turn in progress, escalated, resolved")
    show.add_argument("conversation_id", metavar="ID")
    show.add_argument("--json", action="store_true")


def _ms(value: int | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value / 1000, UTC).isoformat(timespec="milliseconds")


def unknown(state: ConversationState) -> bool:
    """fin-relay has recorded nothing about this conversation."""
    return state.status is None and state.updated_at_ms is None


def render(state: ConversationState) -> str:
    if unknown(state):
        return f"conversation {state.conversation_id}: no state (fin-relay has not seen it)"
    rows = [
        ("conversation", state.conversation_id),
        ("status", state.status or "-"),
        ("turn in progress", "yes" if state.turn_in_progress else "no"),
        ("escalated", "yes" if state.escalated else "no"),
        ("resolved", "yes" if state.resolved else "no"),
        ("updated at", _ms(state.updated_at_ms)),
        ("turn started at", _ms(state.turn_started_at_ms)),
        ("last Fin event at", state.last_event_at or "-"),
    ]
    return "\n".join(f"{k:<18} {v}" for k, v in rows)


@pipe_safe
def run(args: argparse.Namespace) -> int:
    with Producer(load(ProducerSettings)) as producer:
        try:
            state = producer.get_conversation(args.conversation_id)
        except BrokerUnavailableError as exc:
            print(f"fin-relay conversation: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(state.as_dict()))
    elif unknown(state):
        print(f"fin-relay conversation: {render(state)}", file=sys.stderr)
    else:
        print(render(state))
    return EXIT_PROBLEM if unknown(state) else EXIT_OK

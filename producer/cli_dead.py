"""``fin-relay dead list|show|replay|purge``: inspect and recover jobs and events that failed.

``ID`` is a dead letter's id (the job id, or the event id) or its stream entry id.
"""

from __future__ import annotations

import argparse
import json
import sys

from fin_relay.contract.errors import BrokerUnavailableError
from fin_relay.contract.jobs import RELAY_KWARG, request_summary
from fin_relay.contract.settings import ProducerSettings, load
from fin_relay.producer import dead
from fin_relay.producer.enqueue import Producer
from fin_relay.producer.render import line


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="dead letters, oldest first")
    listing.add_argument("--json", action="store_true", help="one envelope per line")
    show = sub.add_parser("show", help="one dead letter and a summary of its original job")
    show.add_argument("id", metavar="ID")
    show.add_argument(
        "--payload", action="store_true", help="print the full original kwargs (customer data)"
    )
    replay = sub.add_parser("replay", help="re-enqueue with the original ids")
    replay.add_argument("id", metavar="ID", nargs="?")
    replay.add_argument("--all", action="store_true", help="every dead letter")
    purge = sub.add_parser("purge", help="delete dead letters and their payloads")
    purge.add_argument("id", metavar="ID", nargs="?")
    purge.add_argument("--all", action="store_true", help="every dead letter")


def _list(producer: Producer, args: argparse.Namespace) -> int:
    for letter in dead.iter_dead(producer.redis_client, producer.names.dead):
        if args.json:
            print(letter.envelope.to_json())
        else:
            print(f"{letter.entry_id:<16} {line(letter.envelope)}")
    return 0


def _show(producer: Producer, args: argparse.Namespace) -> int:
    letters = dead.find(producer.redis_client, producer.names.dead, args.id)
    if not letters:
        print(f"fin-relay dead: no dead letter {args.id!r}", file=sys.stderr)
        return 1
    for letter in letters:
        out: dict[str, object] = {
            "entry_id": letter.entry_id,
            "envelope": letter.envelope.model_dump(),
        }
        try:
            original = dead.payload(producer.redis_client, producer, letter.dead_id)
        except dead.DeadLetterError as exc:
            out["payload"] = str(exc)
        else:
            kwargs = dict(original["kwargs"])
            relay = kwargs.pop(RELAY_KWARG, None)
            shown = kwargs if args.payload else request_summary(kwargs)
            out["payload"] = {**original, "kwargs": shown, RELAY_KWARG: relay}
        print(json.dumps(out, indent=2, ensure_ascii=False, default=str))
    return 0


def _targets(producer: Producer, args: argparse.Namespace) -> list[str] | None:
    if args.all == (args.id is not None):
        print(f"fin-relay dead {args.action}: give an ID or --all", file=sys.stderr)
        return None
    if args.id is not None:
        return [args.id]
    ids = [d.dead_id for d in dead.iter_dead(producer.redis_client, producer.names.dead)]
    return list(dict.fromkeys(ids))


def _replay(producer: Producer, args: argparse.Namespace) -> int:
    targets = _targets(producer, args)
    if targets is None:
        return 2
    status = 0
    for ident in targets:
        letters = dead.find(producer.redis_client, producer.names.dead, ident)
        dead_id = letters[0].dead_id if letters else ident
        try:
            handle = dead.replay(producer, dead_id)
        except dead.DeadLetterError as exc:
            print(f"fin-relay dead replay: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"replayed {dead_id} as {handle.task} {handle.id}", flush=True)
    return status


def _purge(producer: Producer, args: argparse.Namespace) -> int:
    if args.all and args.id is None:
        count = dead.purge_all(producer.redis_client, producer)
    elif args.id is not None and not args.all:
        letters = dead.find(producer.redis_client, producer.names.dead, args.id)
        count = dead.remove(producer.redis_client, producer, letters, keep_payload=False)
        if not count:
            print(f"fin-relay dead purge: no dead letter {args.id!r}", file=sys.stderr)
            return 1
    else:
        print("fin-relay dead purge: give an ID or --all", file=sys.stderr)
        return 2
    print(f"purged {count} dead letter(s)")
    return 0


ACTIONS = {"list": _list, "show": _show, "replay": _replay, "purge": _purge}


def run(args: argparse.Namespace) -> int:
    with Producer(load(ProducerSettings)) as producer:
        try:
            return ACTIONS[args.action](producer, args)
        except BrokerUnavailableError as exc:
            print(f"fin-relay dead: {exc}", file=sys.stderr)
            return 3

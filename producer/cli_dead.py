"""``fin-relay dead list|show|replay|purge``: inspect and recover jobs and events that failed.

``ID`` is a dead letter's id (the job id, or the event id) or its stream entry id.

Exit codes (``fin_relay.clio``): 0 done; 1 no such dead letter, a replay refused (an expired
job without ``--refresh-expiry``/``--expires-in-s``, a payload gone) or a purge declined;
2 usage or configuration error (also ``purge --all`` without ``--yes`` when standard input is
not a terminal); 3 Redis unavailable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fin_relay.clio import (
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    confirm,
    pipe_safe,
)
from fin_relay.contract.errors import BrokerUnavailableError
from fin_relay.contract.jobs import RELAY_KWARG, request_summary
from fin_relay.contract.settings import ProducerSettings, load
from fin_relay.producer import dead
from fin_relay.producer.enqueue import Producer
from fin_relay.producer.render import error_text, line

#: A dead letter's line in ``dead list`` is longer than ``watch``'s: the error is the point.
LIST_LINE_CHARS = 240


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="dead letters, oldest first, with their error")
    listing.add_argument("--json", action="store_true", help="one envelope per line")
    show = sub.add_parser("show", help="one dead letter and a summary of its original job")
    show.add_argument("id", metavar="ID")
    show.add_argument(
        "--payload", action="store_true", help="print the full original kwargs (customer data)"
    )
    replay = sub.add_parser(
        "replay",
        help="re-enqueue with the original ids",
        description="Re-enqueue dead letters with their original ids. A job whose "
        "relay.expires_at has passed is refused (the worker would drop it again at once) "
        "unless --refresh-expiry or --expires-in-s gives it a new expiry.",
    )
    replay.add_argument("id", metavar="ID", nargs="?")
    replay.add_argument("--all", action="store_true", help="every dead letter")
    expiry = replay.add_mutually_exclusive_group()
    expiry.add_argument(
        "--refresh-expiry",
        action="store_true",
        help="give a job with relay.expires_at a new one: now plus the window it was "
        "enqueued with (expires_at - enqueued_at)",
    )
    expiry.add_argument(
        "--expires-in-s",
        type=_positive_seconds,
        metavar="S",
        help="set relay.expires_at to now + S seconds",
    )
    purge = sub.add_parser("purge", help="delete dead letters and their payloads")
    purge.add_argument("id", metavar="ID", nargs="?")
    purge.add_argument(
        "--all", action="store_true", help="every dead letter (asks first, unless --yes)"
    )
    purge.add_argument(
        "--yes", "-y", action="store_true", help="do not ask for confirmation (scripts)"
    )


def _list(producer: Producer, args: argparse.Namespace) -> int:
    found = 0
    for letter in dead.iter_dead(producer.redis_client, producer.names.dead):
        found += 1
        if args.json:
            print(letter.envelope.to_json())
        else:
            print(f"{letter.entry_id:<16} {line(letter.envelope, LIST_LINE_CHARS)}")
    if not found:
        # on stderr with --json: standard output stays one envelope per line (here: none)
        print("no dead letters", file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK


def _show(producer: Producer, args: argparse.Namespace) -> int:
    letters = dead.find(producer.redis_client, producer.names.dead, args.id)
    if not letters:
        print(f"fin-relay dead: no dead letter {args.id!r}", file=sys.stderr)
        return EXIT_PROBLEM
    for letter in letters:
        out: dict[str, object] = {
            "entry_id": letter.entry_id,
            "error": error_text(letter.envelope.data),
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
    return EXIT_OK


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
        return EXIT_USAGE
    status = EXIT_OK
    for ident in targets:
        letters = dead.find(producer.redis_client, producer.names.dead, ident)
        dead_id = letters[0].dead_id if letters else ident
        try:
            handle = dead.replay(
                producer,
                dead_id,
                refresh_expiry=args.refresh_expiry,
                expires_in_s=args.expires_in_s,
            )
        except dead.DeadLetterError as exc:
            print(f"fin-relay dead replay: {exc}", file=sys.stderr)
            status = EXIT_PROBLEM
            continue
        print(f"replayed {dead_id} as {handle.task} {handle.id}", flush=True)
    return status


def _purge(producer: Producer, args: argparse.Namespace) -> int:
    if args.all == (args.id is not None):
        print("fin-relay dead purge: give an ID or --all", file=sys.stderr)
        return EXIT_USAGE
    if args.id is not None:
        letters = dead.find(producer.redis_client, producer.names.dead, args.id)
        count = dead.remove(producer.redis_client, producer, letters, keep_payload=False)
        if not count:
            print(f"fin-relay dead purge: no dead letter {args.id!r}", file=sys.stderr)
            return EXIT_PROBLEM
    else:
        if not args.yes:
            waiting = sum(1 for _ in dead.iter_dead(producer.redis_client, producer.names.dead))
            answer = confirm(
                f"purge all {waiting} dead letter(s) and their payloads from "
                f"{producer.names.dead}? This cannot be undone."
            )
            if answer is None:
                print(
                    "fin-relay dead purge: --all deletes every dead letter; standard input is "
                    "not a terminal to confirm it: add --yes",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            if not answer:
                print("nothing purged", file=sys.stderr)
                return EXIT_PROBLEM
        count = dead.purge_all(producer.redis_client, producer)
    print(f"purged {count} dead letter(s)")
    return EXIT_OK


ACTIONS: dict[str, Any] = {"list": _list, "show": _show, "replay": _replay, "purge": _purge}


@pipe_safe
def run(args: argparse.Namespace) -> int:
    with Producer(load(ProducerSettings)) as producer:
        try:
            return int(ACTIONS[args.action](producer, args))
        except BrokerUnavailableError as exc:
            print(f"fin-relay dead: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE

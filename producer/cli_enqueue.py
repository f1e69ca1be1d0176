"""``fin-relay enqueue OPERATION``: enqueue one Fin call from the shell; prints the job id.

Exit codes: 0 enqueued (with ``--wait``: succeeded or skipped), 1 the job failed, 2 invalid
arguments, 3 broker/Redis unavailable, 4 no outcome within ``--timeout-s``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fin_relay.contract.errors import BrokerUnavailableError, InvalidJobError
from fin_relay.contract.names import CALL_FAILED, CALL_TASKS
from fin_relay.contract.settings import ProducerSettings, load
from fin_relay.producer.enqueue import Producer

EXIT_FAILED, EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_TIMEOUT = 1, 2, 3, 4


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("operation", choices=list(CALL_TASKS), help="the Fin call to enqueue")
    body = parser.add_argument_group("request body (flags override --json)")
    body.add_argument("--json", metavar="FILE", help="full request body as JSON ('-' = stdin)")
    body.add_argument("--conversation-id")
    body.add_argument("--user-id")
    body.add_argument("--user-name")
    body.add_argument("--user-email")
    body.add_argument("--message", help="the user's message text (escalate: the note)")
    body.add_argument("--context", help="escalate: context for the human agent")
    body.add_argument("--rating", help="csat: terrible|bad|ok|good|amazing")
    body.add_argument("--remark", help="csat: free-text remark")
    body.add_argument("--procedure-id", help="procedure_run: the procedure to run")
    opts = parser.add_argument_group("job options")
    opts.add_argument("--job-id", help="caller-chosen id: enqueueing it twice is one job")
    opts.add_argument("--correlation-id")
    opts.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    opts.add_argument("--expires-in-s", type=float, help="drop the job if not sent by then")
    parser.add_argument("--wait", action="store_true", help="wait for and print the outcome")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="with --wait (default 60)")


def _read_json(source: str) -> dict[str, Any]:
    text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()  # noqa: SIM115
    value = json.loads(text)
    if not isinstance(value, dict):
        raise InvalidJobError("--json: the body must be a JSON object")
    return value


def _metadata(pairs: list[str]) -> dict[str, str] | None:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidJobError(f"--metadata: expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out or None


def arguments_from(args: argparse.Namespace) -> dict[str, Any]:
    """The enqueue arguments (body fields + options) that the flags and ``--json`` describe."""
    body: dict[str, Any] = _read_json(args.json) if args.json else {}
    user = dict(body.get("user") or {})
    for flag, key in (("user_id", "id"), ("user_name", "name"), ("user_email", "email")):
        if getattr(args, flag) is not None:
            user[key] = getattr(args, flag)
    if user:
        body["user"] = user
    for flag in ("conversation_id", "context", "rating", "remark", "procedure_id"):
        if getattr(args, flag) is not None:
            body[flag] = getattr(args, flag)
    if args.message is not None:
        body["message"] = args.message  # text: a user message (escalate: the note itself)
    options = {
        "job_id": args.job_id,
        "correlation_id": args.correlation_id,
        "metadata": _metadata(args.metadata),
        "expires_in_s": args.expires_in_s,
    }
    body.update({k: v for k, v in options.items() if v is not None})
    return body


def run(args: argparse.Namespace) -> int:
    # First, before reading a body from stdin: a ConfigurationError is one line, exit 2
    # (fin_relay.cli).
    settings = load(ProducerSettings)
    try:
        arguments = arguments_from(args)
    except (InvalidJobError, ValueError, OSError) as exc:
        print(f"fin-relay enqueue: {exc}", file=sys.stderr)
        return EXIT_INVALID
    with Producer(settings) as producer:
        try:
            handle = producer.enqueue(args.operation, arguments)
        except InvalidJobError as exc:
            print(f"fin-relay enqueue: {exc}", file=sys.stderr)
            return EXIT_INVALID
        except BrokerUnavailableError as exc:
            print(f"fin-relay enqueue: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(handle.id, flush=True)
        if not handle.created:
            print(f"(job {handle.id} was already enqueued: not sent again)", file=sys.stderr)
        if not args.wait:
            return 0
        try:
            outcome = handle.wait(timeout_s=args.timeout_s)
        except TimeoutError as exc:
            print(f"fin-relay enqueue: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
        print(outcome.to_json(), flush=True)
        return EXIT_FAILED if outcome.type == CALL_FAILED else 0

"""``fin-relay`` command line: one table of subcommands, each implemented in its own module.

Every command module exposes ``configure(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``. Modules are imported only when their command runs, so
``fin-relay --help`` is instant and a producer-only install never imports the worker.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fin_relay import __version__
from fin_relay.clio import pipe_safe
from fin_relay.contract.errors import ConfigurationError

#: name -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "dev": (
        "fin_relay.devmode",
        "run everything locally: embedded Redis, simulator, ingest, worker and a demo conversation",
    ),
    "ingest": ("fin_relay.webhook_ingest.cli", "serve the webhook ingest (ASGI, uvloop+httptools)"),
    "worker": ("fin_relay.worker.cli", "run a Celery worker that calls Fin"),
    "enqueue": ("fin_relay.producer.cli_enqueue", "enqueue a Fin call (start, reply, ask, ...)"),
    "watch": ("fin_relay.producer.cli_watch", "live tail of events and results"),
    "conversation": ("fin_relay.producer.cli_conversation", "show one conversation's state"),
    "dead": ("fin_relay.producer.cli_dead", "list, show, replay or purge dead letters"),
    "simulator": ("fin_relay.simulator.cli", "run the local Fin Agent API simulator"),
    "doctor": ("fin_relay.doctor", "check configuration, Redis, broker and Fin; explain fixes"),
    "bench": ("fin_relay.bench.cli", "run the benchmarks side by side and write BENCHMARKS.md"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fin-relay",
        description="Reliable relay between your backend and Intercom's Fin Agent API.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'fin-relay COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"fin-relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in COMMANDS:
        parser = _top_parser()
        if not args_list:
            parser.print_help()
            return 2
        parser.parse_args(args_list)  # prints help/version or an error and exits
        return 2
    name = args_list[0]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"fin-relay {name}: not implemented yet", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"fin-relay {name}", description=help_text)
    module.configure(parser)
    args = parser.parse_args(args_list[1:])
    try:
        return int(pipe_safe(module.run)(args) or 0)
    except ConfigurationError as exc:
        # one line, whatever the message holds (its URLs are already masked)
        print(f"fin-relay {name}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

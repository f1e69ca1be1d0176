"""``fin-relay ingest --host 127.0.0.1 --port 8000 [--workers N]``: serve the webhook ingest.

Settings are loaded *before* uvicorn starts, so a missing ``FIN_WEBHOOK_SECRETS`` or
``REDIS_URL`` exits with status 2 and one line naming the variable. uvicorn runs with uvloop and
httptools (baseline.md 4c: the pure-Python stack is 4x slower) and without its own access log:
the app writes one structured line per webhook instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from fin_relay.contract.settings import IngestSettings, load

APP_FACTORY = "fin_relay.webhook_ingest.app:create_app"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``ingest`` options."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes (uvicorn multi-process mode)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )


def run(args: argparse.Namespace) -> int:
    """Check the settings, then serve until interrupted."""
    load(IngestSettings)  # raises ConfigurationError (one line, exit 2) before anything starts
    if args.workers < 1:
        print("fin-relay ingest: --workers must be >= 1", file=sys.stderr)
        return 2
    # Inherited by uvicorn's worker processes, which configure logging in create_app().
    os.environ["FIN_RELAY_LOG_LEVEL"] = args.log_level
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # /metrics must add up every server process: prometheus_client's multi-process mode.
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fin-relay-metrics-")
    from fin_relay.observability import configure_logging

    configure_logging(args.log_level)
    import uvicorn

    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        proxy_headers=False,  # nothing uses the client address; saves a middleware per request
        date_header=False,
    )
    return 0

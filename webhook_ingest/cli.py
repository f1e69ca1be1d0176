"""``fin-relay ingest --host 127.0.0.1 --port 8000 [--workers N]``: serve the webhook ingest.

Settings are loaded *before* uvicorn starts, so a missing ``FIN_WEBHOOK_SECRETS`` or
``REDIS_URL`` exits with status 2 and one line naming the variable. uvicorn runs with uvloop and
httptools (the pure-Python asyncio + h11 stack is much slower: docs/ingest.md) and without its
own access log: the app writes one structured line per webhook instead.

Slow clients. uvicorn 0.54's httptools protocol bounds neither a connection that never sends
anything nor one that trickles its request headers (its keep-alive timer is cancelled by every
byte received), and the ASGI app only starts once the headers are complete. So the ingest runs
uvicorn with :class:`BoundedHttpToolsProtocol`: a connection that has not sent a request's
complete headers ``FIN_RELAY_HEADER_TIMEOUT_S`` after it opened (or after its previous
response) is closed, with a 408 when a request had begun. The body is the app's to bound
(``FIN_RELAY_BODY_TIMEOUT_S``: 408). No ``limit_concurrency``: uvicorn answers 503 to every
request over that limit, so slow clients could take every slot from fast ones; connections are
bounded by the process's file-descriptor limit instead, and each slow one only for the timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import socket
import sys
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fin_relay.contract.settings import IngestSettings, load
from fin_relay.webhook_ingest.app import WEBHOOK_PATH

APP_FACTORY = "fin_relay.webhook_ingest.app:create_app"
HTTP_PROTOCOL = "fin_relay.webhook_ingest.cli:BoundedHttpToolsProtocol"

_HEADER_TIMEOUT_BODY = b'{"error":"header_timeout"}'
_HEADER_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
    % (len(_HEADER_TIMEOUT_BODY), _HEADER_TIMEOUT_BODY)
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus a bound on the time a connection may take to send a
    request's headers (``FIN_RELAY_HEADER_TIMEOUT_S``).

    Per request it costs two attribute writes and one ``loop.time()``: no timer per request.
    One sweeper task per event loop checks every connection's deadline a few times a second.
    """

    #: Read from the settings once per server process (``--workers N`` spawns processes).
    header_timeout_s: float | None = None
    _sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def _timeout_s(cls) -> float:
        if cls.header_timeout_s is None:
            cls.header_timeout_s = load(IngestSettings).fin_relay_header_timeout_s
        return cls.header_timeout_s

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._request_begun = False
        self._headers_due: float | None = self.loop.time() + self._timeout_s()
        sweeper = self._sweepers.get(self.loop)
        if sweeper is None or sweeper.done():
            self._sweepers[self.loop] = self.loop.create_task(self._sweep(self.connections))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True

    def on_headers_complete(self) -> None:
        self._headers_due = None
        self._request_begun = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._headers_due = self.loop.time() + self._timeout_s()

    def _idle(self) -> bool:
        """No request in progress (its headers were not complete, or it was answered)."""
        return self.cycle is None or bool(self.cycle.response_complete)

    def header_timed_out(self) -> None:
        """Close the connection: a 408 first when a request had begun."""
        if self.transport.is_closing():
            return
        if self._request_begun:
            self.transport.write(_HEADER_TIMEOUT_408)
        self.transport.close()

    @classmethod
    async def _sweep(cls, connections: set[Any]) -> None:
        timeout_s = cls._timeout_s()
        period = min(1.0, timeout_s / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for connection in list(connections):
                due = getattr(connection, "_headers_due", None)
                if due is not None and now >= due and connection._idle():
                    connection.header_timed_out()


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
    """Check the settings, bind, say where it listens, then serve until interrupted."""
    # raises ConfigurationError (one line, exit 2) before anything starts
    settings = load(IngestSettings)
    BoundedHttpToolsProtocol.header_timeout_s = settings.fin_relay_header_timeout_s
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
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http=HTTP_PROTOCOL,  # httptools, with a bound on slow request headers
        lifespan="on",
        # A stop never waits longer than a request can take: body + enqueue timeouts.
        timeout_graceful_shutdown=math.ceil(
            settings.fin_relay_body_timeout_s + settings.fin_relay_enqueue_timeout_s + 1
        ),
        access_log=False,
        # uvicorn's own warnings and errors go through fin-relay's handler (JSON lines, one
        # timestamp format), not a logging configuration of uvicorn's.
        log_config=None,
        log_level="warning",
        server_header=False,
        proxy_headers=False,  # nothing uses the client address; saves a middleware per request
        date_header=False,
    )
    # Bound here (as uvicorn.run would for --workers N), so the start-up line names the port
    # really bound (--port 0: any free one) and is written only once it accepts connections.
    sock = config.bind_socket()  # a taken port: uvicorn logs it and exits with status 3
    sock.listen(config.backlog)
    announce(sock, args.workers)
    if args.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
        return 0
    config.load_app()
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    return 0 if server.started else 1


def announce(sock: socket.socket, workers: int) -> str:
    """Log (and return) the start-up line: where the ingest listens."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in str(host) else str(host)
    url = f"http://{shown}:{port}"
    logging.getLogger("fin_relay.webhook_ingest").info(
        "fin-relay ingest listening on %s (webhooks: POST %s%s; pid %d, %d server process(es))",
        url,
        url,
        WEBHOOK_PATH,
        os.getpid(),
        workers,
        extra={"url": url, "host": str(host), "port": int(port), "workers": workers},
    )
    return url

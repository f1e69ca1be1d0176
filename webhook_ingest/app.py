"""The webhook ingest: a raw ASGI app (no framework).

A framework's tax on this endpoint is measurable (docs/ingest.md), so the few routes are
dispatched by hand. A webhook goes through a chain of
small named steps, each of which either passes or raises :class:`Rejected`:

``check_headers`` (413 by Content-Length, 415) → ``read_rest`` (413 while streaming; 408 when
the whole body has not arrived ``FIN_RELAY_BODY_TIMEOUT_S`` after the headers) →
``verify`` (401, unless the body is the settings page's test request: a JSON object without
``event_name``, answered 200 whatever its signature) → ``parse_body`` (400; no ``event_name`` =
test request → 200) → ``check_replay`` (400 ``event_too_old``) → ``dedup_key`` → enqueue (atomic
with the de-dup mark; 503 when Redis cannot confirm in time) → 202 new / 200 duplicate. Any
other exception → 500, logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from fin_relay.contract.errors import BrokerUnavailableError
from fin_relay.contract.names import Names
from fin_relay.contract.settings import IngestSettings, load
from fin_relay.webhook_ingest.accesslog import AccessLog
from fin_relay.webhook_ingest.enqueue import Enqueuer, RedisEnqueuer, redis_client
from fin_relay.webhook_ingest.events import (
    Event,
    Rejected,
    check_replay,
    dedup_key,
    event_bytes,
    parse_body,
)
from fin_relay.webhook_ingest.verify import Verifier

log = logging.getLogger("fin_relay.webhook_ingest")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WEBHOOK_PATH = "/webhooks/fin"
RETRY_AFTER_S = 5
_MAX_LOGGED_ID = 128
_JSON = (b"content-type", b"application/json")
_SIG = b"x-fin-agent-api-webhook-signature"


class _Disconnected(Exception):
    """The client went away before the body was read; nothing is answered or enqueued."""


def _body(text: str) -> bytes:
    return text.encode()


_ACCEPTED = _body('{"status":"accepted"}')
_DUPLICATE = _body('{"status":"duplicate"}')
_IGNORED = _body('{"status":"ignored"}')
_OK = _body('{"status":"ok"}')
_LENGTHS = {n: str(n).encode() for n in range(64)}

_Headers = tuple[tuple[bytes, bytes], ...]
_CLOSE: _Headers = ((b"connection", b"close"),)
_RETRY_AFTER: _Headers = ((b"retry-after", str(RETRY_AFTER_S).encode()),)
_STARTS: dict[tuple[int, int, _Headers], Message] = {}
_BODIES: dict[bytes, Message] = {}


def _start_message(status: int, length: int, headers: _Headers) -> Message:
    """The ``http.response.start`` message, built once per (status, length, extra headers).

    Servers only read these messages (uvicorn copies the header list), so they are shared.
    """
    key = (status, length, headers)
    message = _STARTS.get(key)
    if message is None:
        all_headers = [_JSON, (b"content-length", _LENGTHS.get(length) or str(length).encode())]
        all_headers += headers
        message = {"type": "http.response.start", "status": status, "headers": all_headers}
        if len(_STARTS) < 256:  # a fixed set of answers in practice; bounded regardless
            _STARTS[key] = message
    return message


async def respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    headers: _Headers = (),
    head: bool = False,
) -> None:
    """Send a complete JSON response (``head``: headers only, Content-Length kept)."""
    await send(_start_message(status, len(body), headers))
    if head:
        await send({"type": "http.response.body", "body": b""})
        return
    message = _BODIES.get(body)
    if message is None:
        message = {"type": "http.response.body", "body": body}
        if len(_BODIES) < 256:
            _BODIES[body] = message
    await send(message)


def error_body(code: str) -> bytes:
    """``{"error": code}`` (codes are fixed ASCII identifiers)."""
    return _body(f'{{"error":"{code}"}}')


def check_headers(scope: Scope, max_body_bytes: int) -> tuple[int | None, bytes | None]:
    """Content type must be JSON (415); a declared length over the cap is refused (413).

    Returns ``(content_length or None, signature header or None)``. A repeated signature header
    counts as no valid signature.
    """
    ctype: bytes | None = None
    length: bytes | None = None
    signature: bytes | None = None
    sig_count = 0
    for name, value in scope["headers"]:
        if name == b"content-type":
            ctype = value
        elif name == b"content-length":
            length = value
        elif name == _SIG:
            signature = value
            sig_count += 1
    content_length: int | None = None
    if length is not None:
        if not length.isdigit() or len(length) > 20:
            raise Rejected(400, "invalid_content_length")
        content_length = int(length)
        if content_length > max_body_bytes:
            raise Rejected(413, "body_too_large")
    if ctype is None or ctype.split(b";", 1)[0].strip().lower() != b"application/json":
        raise Rejected(415, "unsupported_media_type")
    return content_length, (signature if sig_count == 1 else None)


async def read_rest(message: Message, receive: Receive, max_body_bytes: int) -> bytes:
    """The request body from its first ``http.request`` message on, refusing (413) as soon
    as it grows past the cap."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_body_bytes:
                raise Rejected(413, "body_too_large")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
        message = await receive()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Outcome:
    """What the access log records about one webhook."""

    __slots__ = ("conversation_id", "dedup", "error", "event_name")

    def __init__(self) -> None:
        self.event_name: str | None = None
        self.conversation_id: str | None = None
        self.dedup: str | None = None
        self.error: str | None = None

    def describe(self, event: Event) -> None:
        self.event_name = event.name[:_MAX_LOGGED_ID] if event.name else None
        cid = event.conversation_id
        self.conversation_id = cid[:_MAX_LOGGED_ID] if cid else None


class IngestApp:
    """The ASGI application. Build with :func:`create_app` (settings from the environment).

    ``enqueuer`` overrides the default (Redis Lua or kombu, by broker); ``extra_routes`` maps
    ``path`` to an ASGI callable for additional read-only endpoints (e.g. ``/metrics``).
    """

    def __init__(
        self,
        settings: IngestSettings,
        *,
        enqueuer: Enqueuer | None = None,
        access_log: AccessLog | None = None,
        extra_routes: Mapping[str, ASGIApp] | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self.names = Names(settings.fin_relay_namespace)
        self._verify = Verifier(
            tuple(settings.webhook_secrets), settings.fin_relay_webhook_secret_encoding
        )
        self._max_body = settings.fin_relay_max_body_bytes
        self._ttl_s = settings.fin_relay_dedup_ttl_s
        self._enqueuer = enqueuer
        self.access_log = access_log if access_log is not None else AccessLog()
        self._extra = dict(extra_routes or {})
        self._clock_ms = clock_ms if clock_ms is not None else _now_ms
        # Bodies being read: the request's task -> when its headers were complete
        # (perf_counter). A watchdog cancels the reads older than the body timeout; see
        # _watch_body_reads. One watchdog per event loop, started by the first request.
        self._body_timeout_s = settings.fin_relay_body_timeout_s
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._timed_out: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def enqueuer(self) -> Enqueuer:
        """The enqueuer, created on first use (inside the serving event loop)."""
        if self._enqueuer is None:
            self._enqueuer = build_enqueuer(self.settings, self.names)
        return self._enqueuer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"] == WEBHOOK_PATH and scope["method"] == "POST":  # the hot path
                await self._webhook(scope, receive, send)
            else:
                await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        """Close the Redis/broker connections and flush the access log."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.access_log.flush()
        if self._enqueuer is not None:
            await self._enqueuer.aclose()

    def _track_body_read(self, started: float) -> asyncio.Task[Any] | None:
        """Register the current request's body read with the watchdog (cheap: a dict entry;
        no timer per request)."""
        loop = self._loop
        task = asyncio.current_task(loop) if loop is not None else None
        if task is None:  # first request on this loop (a loop of its own per test, too)
            loop = self._loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
            if task is None:  # pragma: no cover - ASGI servers run apps in tasks
                return None
            self._reading.clear()
            self._timed_out.clear()
            self._watchdog = loop.create_task(self._watch_body_reads())
        self._reading[task] = started
        return task

    async def _watch_body_reads(self) -> None:
        """Cancel every body read that has taken longer than the body timeout; the request
        then answers 408 (``_webhook``). A read is in ``_reading`` only while it awaits the
        client, so the cancellation can only land on that await."""
        period = min(0.25, self._body_timeout_s / 4)
        reading, timed_out = self._reading, self._timed_out
        while True:
            await asyncio.sleep(period)
            if not reading:
                continue
            limit = time.perf_counter() - self._body_timeout_s
            for task, started in list(reading.items()):
                if started <= limit:
                    del reading[task]
                    timed_out.add(task)
                    task.cancel()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == WEBHOOK_PATH:  # POST never gets here: __call__ sends it to _webhook
            if method in ("GET", "HEAD"):
                await respond(send, 200, _OK, head=method == "HEAD")
            else:
                await respond(
                    send,
                    405,
                    error_body("method_not_allowed"),
                    headers=((b"allow", b"GET, HEAD, POST"),),
                )
        elif path == "/healthz":
            await respond(send, 200, _OK, head=method == "HEAD")
        elif path == "/readyz":
            ready = await self.enqueuer.ping(min(1.0, self.settings.fin_relay_enqueue_timeout_s))
            body = _OK if ready else error_body("redis_unavailable")
            await respond(send, 200 if ready else 503, body, head=method == "HEAD")
        elif path in self._extra:
            await self._extra[path](scope, receive, send)
        else:
            await respond(send, 404, error_body("not_found"), head=method == "HEAD")

    async def _webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        outcome = _Outcome()
        headers: _Headers = ()
        try:
            status, body = await self._process(scope, receive, outcome, started)
        except Rejected as rejected:
            status, body, outcome.error = rejected.status, error_body(rejected.code), rejected.code
            if status == 413:
                headers = _CLOSE
        except BrokerUnavailableError as exc:
            status, body, outcome.error = 503, error_body("unavailable"), "unavailable"
            headers = _RETRY_AFTER
            log.debug("webhook answered 503: %s", exc)  # the enqueuer logs the cause per batch
        except _Disconnected:
            outcome.error = "client_disconnected"
            self._record(scope, 499, started, outcome)
            return
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task not in self._timed_out:
                raise  # not ours: the server is shutting down
            self._timed_out.discard(task)
            task.uncancel()
            status, body, outcome.error = 408, error_body("body_timeout"), "body_timeout"
            headers = _CLOSE  # the rest of the body may still come: never read it
        except Exception:
            status, body, outcome.error = 500, error_body("internal_error"), "internal_error"
            log.exception("webhook failed unexpectedly (answered 500, nothing enqueued)")
        await respond(send, status, body, headers=headers)
        self._record(scope, status, started, outcome)

    def _record(self, scope: Scope, status: int, started: float, outcome: _Outcome) -> None:
        self.access_log.record(
            method=scope["method"],
            path=scope["path"],
            status=status,
            started_s=started,
            event_name=outcome.event_name,
            conversation_id=outcome.conversation_id,
            dedup=outcome.dedup,
            error=outcome.error,
        )

    async def _process(
        self, scope: Scope, receive: Receive, outcome: _Outcome, started: float
    ) -> tuple[int, bytes]:
        """The chain of steps; returns ``(status, body)`` or raises :class:`Rejected`."""
        _length, signature = check_headers(scope, self._max_body)
        task = self._track_body_read(started)
        try:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                raw: bytes = message.get("body", b"")  # the usual case: the whole body at once
                if len(raw) > self._max_body:
                    raise Rejected(413, "body_too_large")
            else:
                raw = await read_rest(message, receive, self._max_body)
        finally:
            if task is not None:
                self._reading.pop(task, None)
        if not self._verify(raw, signature):
            # Only now is an unauthenticated body looked at, and only to recognise the settings
            # page's test request, which Intercom may send unsigned or signed otherwise.
            if not is_test_request(raw):
                raise Rejected(401, "invalid_signature")
            # DEBUG: anyone can send one; the access log records each request already.
            log.debug(
                "test request received (no event_name; %s): answered 200, not enqueued",
                "no valid signature header" if signature is None else "signature not matching",
            )
            outcome.dedup = "ping"
            return 200, _IGNORED
        event = parse_body(raw)
        outcome.describe(event)
        if event.name is None:
            log.info("signed test request received (no event_name): answered 200, not enqueued")
            outcome.dedup = "ping"
            return 200, _IGNORED
        now_ms = self._clock_ms()
        try:
            check_replay(event, now_ms=now_ms, ttl_s=self._ttl_s)
        except Rejected as rejected:
            log.warning(
                "refused %s event %s for conversation %r",
                rejected.code,
                event.name,
                outcome.conversation_id,
            )
            raise
        enqueuer = self._enqueuer if self._enqueuer is not None else self.enqueuer
        try:
            event_id = dedup_key(event)
            new = await enqueuer.enqueue(event_id, event_bytes(event), now_ms)
        except UnicodeEncodeError:  # lone surrogates in a string: valid JSON, not valid text
            raise Rejected(400, "invalid_unicode") from None
        outcome.dedup = "new" if new else "duplicate"
        return (202, _ACCEPTED) if new else (200, _DUPLICATE)


_JSON_WHITESPACE = b" \t\r\n"


def is_test_request(raw: bytes) -> bool:
    """Whether ``raw`` is a JSON object without ``event_name`` (the settings page's test
    request), decided with the ingest's own parser; anything else, including what
    :func:`parse_body` refuses, is not. A body not starting with ``{`` is not parsed at all."""
    if raw.lstrip(_JSON_WHITESPACE)[:1] != b"{":
        return False
    try:
        return parse_body(raw).name is None
    except Rejected:
        return False


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def build_enqueuer(settings: IngestSettings, names: Names) -> Enqueuer:
    """The Lua enqueuer for a Redis broker, else the kombu one (e.g. RabbitMQ)."""
    timeout_s = settings.fin_relay_enqueue_timeout_s
    client = redis_client(settings.redis_url, timeout_s)
    ttl_s = settings.fin_relay_dedup_ttl_s
    if settings.broker_is_redis and settings.broker_url == settings.redis_url:
        return RedisEnqueuer(client, names, ttl_s=ttl_s, timeout_s=timeout_s)
    if settings.broker_is_redis:
        # A separate Redis broker: the mark and the LPUSH must live in the same server to be
        # atomic, so the marks go to the broker Redis too.
        broker = redis_client(settings.broker_url, timeout_s)
        return RedisEnqueuer(broker, names, ttl_s=ttl_s, timeout_s=timeout_s)
    from fin_relay.webhook_ingest.kombu_enqueue import KombuEnqueuer

    return KombuEnqueuer(client, names, settings.broker_url, ttl_s=ttl_s, timeout_s=timeout_s)


def create_app(**overrides: Any) -> IngestApp:
    """App factory (``fin_relay.webhook_ingest.app:create_app``, uvicorn ``factory=True``).

    Settings come from the environment (and ``.env``); raises ``ConfigurationError`` with one
    line naming the variable when they are invalid (e.g. no ``FIN_WEBHOOK_SECRETS``).
    """
    settings = load(IngestSettings, **overrides)
    _observability(settings)
    from fin_relay import observability
    from fin_relay.webhook_ingest.metrics import MetricsEndpoint, RequestMetrics

    observability.enable_metrics(observability.INGEST)  # its own series only, from the start

    broker = settings.broker_url if settings.broker_is_redis else settings.redis_url
    app = IngestApp(settings, extra_routes={"/metrics": MetricsEndpoint(broker)})
    app.access_log.metrics = RequestMetrics()
    return app


def _observability(settings: IngestSettings) -> None:
    """Logging (in uvicorn's worker processes too) and Sentry when ``SENTRY_DSN`` is set."""
    from fin_relay import observability

    if not logging.getLogger().handlers:
        observability.configure_logging(os.environ.get("FIN_RELAY_LOG_LEVEL", "info"))
    observability.init_sentry(settings, "ingest")

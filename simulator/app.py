"""The simulator as a raw ASGI application (no framework: it must never be the bottleneck).

Order of checks for ``/fin/*``: bearer token (401, no rate-limit headers) → route (404, also for
a method other than POST) → rate limit (429) → injected faults → ``Intercom-Version`` (400
``intercom_version_invalid``) → the operation exists in that version's schema (400
``intercom_version_invalid``) → JSON body (400) → the version's request schema (400
``parameter_invalid``; 422 on ``/fin/csat``) → handler. Every response has ``X-Request-Id``;
authenticated ones carry ``X-RateLimit-*``. Paths under ``/_sim/`` are the control API
(``fin_relay.simulator.control``), without auth.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fin_relay.contract.fin_api import API_VERSIONS
from fin_relay.simulator import control, scenarios, spec, validation
from fin_relay.simulator.config import SimulatorConfig
from fin_relay.simulator.endpoints import HANDLERS, Result
from fin_relay.simulator.errors import ApiError, status_error
from fin_relay.simulator.faults import FaultTable
from fin_relay.simulator.ratelimit import FixedWindowLimiter
from fin_relay.simulator.state import Conversation, Store, now_ms
from fin_relay.simulator.webhooks import Dispatcher

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_STATIC_ROUTES: dict[str, str] = {
    path: op for op, path in spec.OPERATION_PATHS.items() if "{" not in path
}
_PROCEDURE_RE = re.compile(r"^/fin/procedures/([^/]+)/run$")
_JSON = (b"content-type", b"application/json")
_INVALID = object()  # a body that is not JSON


_IDS = random.Random()  # seeded from os.urandom once; ids need uniqueness, not secrecy


def new_request_id() -> str:
    """A random UUID4 string without a getrandom() syscall per request."""
    return str(uuid.UUID(int=_IDS.getrandbits(128), version=4))


def _route(path: str) -> tuple[str | None, dict[str, str]]:
    op = _STATIC_ROUTES.get(path)
    if op is not None:
        return op, {}
    match = _PROCEDURE_RE.match(path)
    if match:
        return "procedure_run", {"procedure_id": match.group(1)}
    return None, {}


def _check_version(raw: str | None, default: str) -> str:
    if raw is None:
        return default
    value = raw.strip()
    if value.lower() == "preview":
        return "Preview"
    if value in API_VERSIONS:
        return value
    if re.fullmatch(r"\d+\.\d+", value) or value == "Unstable":
        message = "Requested resource is not available in current API version."
    else:
        message = "The requested version could not be found"
    raise ApiError(400, "intercom_version_invalid", message, "Intercom-Version")


class ClientDisconnected(Exception):
    """The client went away before its request body arrived: nothing is processed or logged
    (a request Fin never fully received is not a request Fin answered)."""


async def read_body(receive: Receive) -> bytes:
    """The whole request body; :class:`ClientDisconnected` when the client left first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def send_json(
    send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send one JSON response."""
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    all_headers = [_JSON, (b"content-length", str(len(payload)).encode())]
    if headers:
        all_headers += headers
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": payload})


async def _drop(send: Send) -> None:
    """Close the connection without a response (uvicorn: the cycle owns the transport)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "close"):
        transport.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]}
    )
    raise ConnectionAbortedError("simulated dropped connection")


class SimulatorApp:
    """The ASGI callable; also the shared context of handlers and the control API."""

    def __init__(
        self,
        config: SimulatorConfig,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.store = Store()
        self.limiter = FixedWindowLimiter(
            config.rate_limit_per_minute, config.rate_limit_window_s, clock
        )
        self.faults = FaultTable(random.Random(seed))
        if config.faults:
            self.faults.set(config.faults)
        self.dispatcher = Dispatcher(lambda: self.config)
        self.requests: deque[dict[str, Any]] = deque(maxlen=config.log_limit)
        self._token_header = f"Bearer {config.token}".encode()

    def reconfigure(self, config: SimulatorConfig) -> None:
        """Swap the configuration at run time (``POST /_sim/config``)."""
        if config.faults != self.config.faults:
            self.faults.set(config.faults)
        self.config = config
        self._token_header = f"Bearer {config.token}".encode()
        self.limiter.reconfigure(config.rate_limit_per_minute, config.rate_limit_window_s)
        if self.requests.maxlen != config.log_limit:
            self.requests = deque(self.requests, maxlen=config.log_limit)

    # --- conversations ----------------------------------------------------------------------

    def schedule_turn(self, conv: Conversation, text: str) -> None:
        """Mark Fin busy and produce the turn's events after ``reply_delay_ms``."""
        conv.cancel_pending()
        conv.busy = True
        conv.status = "thinking"
        delay_s = max(0.0, self.config.reply_delay_ms / 1000.0)
        loop = asyncio.get_running_loop()
        conv.pending = loop.call_later(delay_s, self._run_turn, conv, text)

    def _run_turn(self, conv: Conversation, text: str) -> None:
        conv.pending = None
        if self.store.get(conv.id) is not conv:
            return
        events, status = scenarios.turn_events(conv, text, self.config.reply_parts)
        conv.busy = False
        conv.status = status
        if any(e["event_name"] == "csat_requested" for e in events):
            conv.csat_offered_at = time.monotonic()
        self.dispatcher.enqueue(conv.id, events)

    # --- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/_sim/"):
                await control.handle(self, scope, receive, send)
            else:
                await self._api(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.dispatcher.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for conv in self.store.conversations.values():
                    conv.cancel_pending()
                await self.dispatcher.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        auth = None
        version_raw = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
            elif name == b"intercom-version":
                version_raw = value.decode("latin-1")
        try:
            body = await read_body(receive)
        except ClientDisconnected:
            return
        try:
            data: Any = json.loads(body)
        except (ValueError, RecursionError):
            data = _INVALID
        entry: dict[str, Any] = {
            "time_ms": now_ms(),
            "method": scope["method"],
            "path": scope["path"],
            "endpoint": None,
            "status": 0,
            "conversation_id": None,
            "message_timestamp": None,
            "deduplicated": False,
            "request_id": request_id,
            "version": version_raw,
            "api_version": None,
            "fault": None,
            "body": data if self.config.log_bodies and data is not _INVALID else None,
        }
        self.requests.append(entry)
        headers = [(b"x-request-id", request_id.encode())]
        try:
            op, path_params = self._admit(scope, auth, entry, headers)
            fault = self.faults.decide(op)
            if fault.delay_s > 0:
                await asyncio.sleep(fault.delay_s)
            if fault.action is not None:
                entry["fault"] = fault.action
                if fault.action == "error":
                    raise status_error(fault.status)
                if fault.action == "timeout":
                    await asyncio.sleep(fault.hang_s)
                await _drop(send)
                return
            result = self._handle(op, path_params, version_raw, data, entry)
        except ApiError as error:
            entry["status"] = error.status
            await send_json(send, error.status, error.body(request_id), headers)
            return
        entry["status"] = result.status
        entry["deduplicated"] = result.deduplicated
        await send_json(send, result.status, result.body, headers)

    def _admit(
        self,
        scope: Scope,
        auth: bytes | None,
        entry: dict[str, Any],
        headers: list[tuple[bytes, bytes]],
    ) -> tuple[str, dict[str, str]]:
        """Token, route and rate limit; adds the rate-limit headers once authenticated."""
        if auth != self._token_header:
            raise ApiError(401, "unauthorized", "Access Token Invalid")
        op, path_params = _route(scope["path"])
        entry["endpoint"] = op
        decision = self.limiter.hit()
        headers += decision.headers()
        if op is None or scope["method"] != "POST":
            raise ApiError(404, "not_found", "Resource Not Found")
        if not decision.allowed:
            if self.config.retry_after:
                wait = max(1, decision.reset_s - int(time.time()))
                headers.append((b"retry-after", str(wait).encode()))
            raise ApiError(429, "rate_limit_exceeded", self.limiter.message())
        return op, path_params

    def _handle(
        self,
        op: str,
        path_params: dict[str, str],
        version_raw: str | None,
        data: Any,
        entry: dict[str, Any],
    ) -> Result:
        version = _check_version(version_raw, self.config.api_version_default)
        entry["api_version"] = version
        validation.check_operation(version, op)
        if data is _INVALID:
            raise ApiError(400, "parameter_invalid", "Request body is not valid JSON")
        if not isinstance(data, dict):
            raise ApiError(400, "parameter_invalid", "Request body must be a JSON object")
        cid = data.get("conversation_id")
        entry["conversation_id"] = cid if isinstance(cid, str) else None
        message = data.get("message")
        if isinstance(message, dict):
            stamp = message.get("timestamp_ms") or message.get("timestamp")
            entry["message_timestamp"] = stamp if isinstance(stamp, str) else None
        validation.check_body(version, op, data)
        return HANDLERS[op](self, data, version, path_params)

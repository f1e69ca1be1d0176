"""The Fin HTTP client: one POST, every outcome translated into ``contract.errors``.

It does **not** retry: the one retry layer is the task (``worker/calls.py``). Connection reuse:
one small ``httpx.Client`` per worker thread (:class:`ThreadLocalClients`) — one shared client
with many pooled connections collapses under load (httpcore scans its whole pool on every
request and release; figures in docs/worker.md, "Design measurements"), while a per-thread
pool of one or two connections keeps that scan O(1) and still reuses keep-alive connections.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from fin_relay.contract.errors import (
    AuthError,
    FinApiError,
    RateLimitedError,
    RetryableError,
)

#: Statuses that are worth retrying (besides 429 and 401, which have their own classes).
RETRYABLE_STATUSES = frozenset({408, 425, 500, 502, 503, 504})
MAX_HINT_DELAY_S = 60.0


@dataclass(frozen=True)
class RateLimitInfo:
    """Fin's ``X-RateLimit-*`` headers of one response (all optional)."""

    limit: int | None = None
    remaining: int | None = None
    reset_s: int | None = None

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> RateLimitInfo:
        return cls(
            limit=_int_header(headers, "x-ratelimit-limit"),
            remaining=_int_header(headers, "x-ratelimit-remaining"),
            reset_s=_int_header(headers, "x-ratelimit-reset"),
        )


@dataclass(frozen=True)
class FinReply:
    """A 2xx answer: Fin's JSON body, its request id, rate-limit headers and the call latency."""

    status: int
    body: dict[str, Any]
    request_id: str | None
    rate: RateLimitInfo
    latency_ms: float


@dataclass
class CallObservation:
    """What one attempt saw, success or not (filled in even when the call raises)."""

    rate: RateLimitInfo = field(default_factory=RateLimitInfo)
    latency_ms: float = 0.0
    sent: bool = False


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def retry_after_s(headers: httpx.Headers, now_s: float | None = None) -> float | None:
    """The server's wait hint: ``Retry-After`` (seconds or HTTP date) first, else
    ``X-RateLimit-Reset`` (epoch seconds). ``None`` when neither is usable."""
    now = time.time() if now_s is None else now_s
    value = headers.get("retry-after")
    if value is not None:
        try:
            return min(MAX_HINT_DELAY_S, max(0.0, float(value)))
        except ValueError:
            try:
                moment = parsedate_to_datetime(value)
                return min(MAX_HINT_DELAY_S, max(0.0, moment.timestamp() - now))
            except (TypeError, ValueError):
                pass
    reset = _int_header(headers, "x-ratelimit-reset")
    if reset is not None:
        return min(MAX_HINT_DELAY_S, max(0.0, reset - now))
    return None


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"raw": response.text[:2000]}


def _request_id(response: httpx.Response, body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("request_id"), str):
        return str(body["request_id"])
    value = response.headers.get("x-request-id")
    return str(value) if value is not None else None


def _error_message(status: int, body: Any) -> str:
    """One line for logs: Fin's first error code/message (error.list or csat's 422 shape)."""
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            return f"HTTP {status} {first.get('code', '')}: {first.get('message', '')}".strip()
        if isinstance(errors, dict) and errors:  # /fin/csat 422: {"errors": {field: message}}
            key, value = next(iter(errors.items()))
            return f"HTTP {status} {key}: {value}"
    return f"HTTP {status}"


def classify(response: httpx.Response) -> FinReply | None:
    """Raise the ``contract.errors`` class for a non-2xx ``response``; ``None`` for a 2xx."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    body = _json_body(response)
    request_id = _request_id(response, body)
    message = _error_message(status, body)
    if status == 429:
        raise RateLimitedError(
            message,
            status=status,
            delay_s=retry_after_s(response.headers),
            body=body,
            request_id=request_id,
        )
    if status == 401:
        raise AuthError(message, status=status, body=body, request_id=request_id)
    if status in RETRYABLE_STATUSES or status >= 500:
        raise RetryableError(
            message,
            status=status,
            delay_s=retry_after_s(response.headers) if "retry-after" in response.headers else None,
            body=body,
            request_id=request_id,
        )
    raise FinApiError(message, status=status, body=body, request_id=request_id)


#: The file defining ``httpx.Client`` (its ``__init__``'s: ``__module__`` says ``httpx``).
_HTTPX_CLIENT_FILE = httpx.Client.__init__.__code__.co_filename


def _client_send_is_httpx_own() -> bool:
    """Whether ``httpx.Client.send`` is httpx's, not a wrapper installed by an instrumentation
    (Sentry, OpenTelemetry): a wrapper's code lives in another file, even under ``wraps``."""
    code = getattr(httpx.Client.send, "__code__", None)
    return code is not None and code.co_filename == _HTTPX_CLIENT_FILE


class FinClient:
    """POSTs to Fin with the headers every call needs; one instance per thread (not shared)."""

    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        api_version: str,
        connect_timeout_s: float,
        read_timeout_s: float,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 2,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        timeout = httpx.Timeout(
            connect=connect_timeout_s,
            read=read_timeout_s,
            write=read_timeout_s,
            pool=connect_timeout_s,
        )
        self._version = api_version
        self._http = httpx.Client(
            base_url=base_url,
            headers={
                "Authorization": f"Bearer {token}",
                "Intercom-Version": api_version,
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": "fin-relay",
            },
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            verify=verify,
        )
        # ``_send``: the request goes straight to the transport the Client chose for its URL
        # (httpx's own, a test's, or an environment proxy's: ``_transport_for_url``, checked
        # against the pinned httpx by the tests), without the Client's per-call header and URL
        # merging, auth and redirect generators and cookie jar, none of which a call to Fin
        # uses: about 40% of the client's CPU per call (docs/worker.md, "Design measurements").
        # Not while something instruments ``Client.send`` (Sentry's httpx integration adds
        # breadcrumbs and trace headers there): then every call goes through the Client.
        self._fast = hasattr(self._http, "_transport_for_url")
        self._extensions = {"timeout": timeout.as_dict()}
        self._routes: dict[str, tuple[httpx.URL, httpx.BaseTransport]] = {}
        self._headers: dict[str, httpx.Headers] = {}

    def __repr__(self) -> str:  # never the token
        return f"FinClient(base_url={str(self._http.base_url)!r})"

    def post(
        self,
        path: str,
        body: dict[str, Any],
        observed: CallObservation,
        version: str | None = None,
    ) -> FinReply:
        """POST ``body`` to ``path``; return the 2xx reply or raise a ``contract.errors`` class.

        ``version`` is the call's ``Intercom-Version`` when it is not the client's default (the
        Preview-only operations).

        ``observed`` receives the rate-limit headers and latency even when this raises, so the
        caller can feed the limiter from every response.
        """
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        started = time.perf_counter()
        try:
            observed.sent = True
            if self._fast and _client_send_is_httpx_own():
                response = self._send(path, content, version or self._version)
            elif version is None or version == self._version:
                response = self._http.post(path, content=content)
            else:
                response = self._http.post(
                    path, content=content, headers={"Intercom-Version": version}
                )
        except httpx.TimeoutException as exc:
            raise RetryableError(f"timeout: {type(exc).__name__}") from None
        except httpx.TransportError as exc:  # connect errors, RemoteProtocolError, ...
            raise RetryableError(f"transport error: {type(exc).__name__}: {exc}") from None
        finally:
            observed.latency_ms = (time.perf_counter() - started) * 1000.0
        observed.rate = RateLimitInfo.from_headers(response.headers)
        classify(response)
        body_json = _json_body(response)
        if not isinstance(body_json, dict):
            body_json = {"value": body_json}
        return FinReply(
            status=response.status_code,
            body=body_json,
            request_id=_request_id(response, body_json),
            rate=observed.rate,
            latency_ms=observed.latency_ms,
        )

    def _send(self, path: str, content: bytes, version: str) -> httpx.Response:
        """``Client.post(path, content=...)`` as httpx would send it, read whole."""
        route = self._routes.get(path)
        if route is None:
            url = self._http.build_request("POST", path).url  # base_url merged as httpx does
            route = self._routes[path] = (url, self._http._transport_for_url(url))
        headers = self._headers.get(version)
        if headers is None:
            headers = self._headers[version] = httpx.Headers(self._http.headers)
            headers["Intercom-Version"] = version
        request = httpx.Request(
            "POST", route[0], headers=headers, content=content, extensions=self._extensions
        )
        response = route[1].handle_request(request)
        response.request = request
        try:
            response.read()
        except BaseException:
            response.close()
            raise
        return response

    def close(self) -> None:
        self._http.close()


class ThreadLocalClients:
    """One :class:`FinClient` per thread, opened lazily, all closed by :meth:`close_all`."""

    def __init__(self, **client_kwargs: Any) -> None:
        self._kwargs = client_kwargs
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[FinClient] = []
        self._ssl: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        """One TLS context for every thread's client (thread-safe once built), as httpx builds
        it by default: each ``httpx.Client`` would otherwise parse the whole CA bundle again,
        holding the GIL, while the worker starts threads under load (docs/worker.md, "Design
        measurements")."""
        if self._ssl is None:
            with self._lock:
                if self._ssl is None:
                    self._ssl = httpx.create_ssl_context()
        return self._ssl

    def get(self) -> FinClient:
        client: FinClient | None = getattr(self._local, "client", None)
        if client is None:
            kwargs = (
                self._kwargs
                if "verify" in self._kwargs
                else {**self._kwargs, "verify": self._ssl_context()}
            )
            client = FinClient(**kwargs)
            self._local.client = client
            with self._lock:
                self._all.append(client)
        return client

    def close_all(self) -> None:
        with self._lock:
            clients, self._all = self._all, []
        for client in clients:
            client.close()
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self._all)

    def __repr__(self) -> str:
        return f"ThreadLocalClients(open={len(self._all)})"

"""Unit tests of the Fin HTTP client's classification (httpx.MockTransport only here)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from fin_relay.contract.errors import (
    AuthError,
    FinApiError,
    RateLimitedError,
    RetryableError,
)
from fin_relay.worker.fin_client import (
    CallObservation,
    FinClient,
    ThreadLocalClients,
    retry_after_s,
)

ERROR_LIST = {
    "type": "error.list",
    "request_id": "req-1",
    "errors": [{"code": "parameter_invalid", "message": "conversation_id is required"}],
}


def client_for(handler: Any) -> FinClient:
    return FinClient(
        base_url="https://api.example.test",
        token="secret-token",
        api_version="2.15",
        connect_timeout_s=1,
        read_timeout_s=1,
        transport=httpx.MockTransport(handler),
    )


def respond(status: int, body: Any, headers: dict[str, str] | None = None) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers or {})

    return handler


def test_success_sends_headers_and_returns_body_and_rate_info() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={"conversation_id": "c1", "status": "thinking"},
            headers={
                "x-ratelimit-remaining": "7",
                "x-ratelimit-reset": "1700000010",
                "x-ratelimit-limit": "166",
                "x-request-id": "rid",
            },
        )

    observed = CallObservation()
    reply = client_for(handler).post("/fin/start", {"conversation_id": "c1"}, observed)
    assert reply.body["status"] == "thinking"
    assert reply.rate.remaining == 7 and reply.rate.reset_s == 1700000010
    assert reply.request_id == "rid"
    request = seen[0]
    assert request.headers["authorization"] == "Bearer secret-token"
    assert request.headers["intercom-version"] == "2.15"
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"conversation_id": "c1"}
    assert observed.rate.remaining == 7


def test_429_uses_reset_header_and_prefers_retry_after() -> None:
    reset = int(time.time()) + 7
    body = {"type": "error.list", "errors": [{"code": "rate_limit_exceeded"}]}
    with pytest.raises(RateLimitedError) as exc:
        client_for(respond(429, body, {"x-ratelimit-reset": str(reset)})).post(
            "/fin/start", {}, CallObservation()
        )
    assert exc.value.delay_s is not None and 5 <= exc.value.delay_s <= 7.5
    with pytest.raises(RateLimitedError) as exc2:
        client_for(respond(429, body, {"x-ratelimit-reset": str(reset), "retry-after": "3"})).post(
            "/fin/start", {}, CallObservation()
        )
    assert exc2.value.delay_s == 3.0


def test_401_is_auth_error_with_request_id() -> None:
    body = {
        "type": "error.list",
        "request_id": "r401",
        "errors": [{"code": "unauthorized", "message": "Access Token Invalid"}],
    }
    with pytest.raises(AuthError) as exc:
        client_for(respond(401, body)).post("/fin/start", {}, CallObservation())
    assert exc.value.request_id == "r401"
    assert "secret-token" not in str(exc.value)


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_server_errors_are_retryable(status: int) -> None:
    with pytest.raises(RetryableError) as exc:
        client_for(respond(status, ERROR_LIST)).post("/fin/start", {}, CallObservation())
    assert not isinstance(exc.value, RateLimitedError | AuthError)
    assert exc.value.status == status


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_hopeless_4xx_are_permanent_with_body(status: int) -> None:
    with pytest.raises(FinApiError) as exc:
        client_for(respond(status, ERROR_LIST)).post("/fin/start", {}, CallObservation())
    assert exc.value.status == status
    assert exc.value.body == ERROR_LIST
    assert exc.value.request_id == "req-1"
    assert "parameter_invalid" in str(exc.value)


def test_csat_422_body_shape() -> None:
    body = {"errors": {"base": "The rating window for this conversation has closed"}}
    with pytest.raises(FinApiError) as exc:
        client_for(respond(422, body, {"x-request-id": "rq"})).post(
            "/fin/csat", {}, CallObservation()
        )
    assert exc.value.body == body and exc.value.request_id == "rq"
    assert "rating window" in str(exc.value)


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.ConnectTimeout("slow"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
)
def test_transport_failures_are_retryable(error: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    observed = CallObservation()
    with pytest.raises(RetryableError) as exc:
        client_for(handler).post("/fin/start", {}, observed)
    assert exc.value.status is None
    assert observed.sent


def test_rate_headers_observed_on_errors_too() -> None:
    observed = CallObservation()
    with pytest.raises(RetryableError):
        client_for(
            respond(
                503, ERROR_LIST, {"x-ratelimit-remaining": "3", "x-ratelimit-reset": "1700000020"}
            )
        ).post("/fin/start", {}, observed)
    assert observed.rate.remaining == 3


def test_retry_after_http_date_and_garbage() -> None:
    headers = httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after_s(headers) == 0.0  # in the past
    assert retry_after_s(httpx.Headers({"retry-after": "soon"})) is None


def test_repr_never_shows_token() -> None:
    client = client_for(respond(200, {}))
    assert "secret-token" not in repr(client)


def test_thread_local_clients_one_per_thread_and_closed() -> None:
    import threading

    pool = ThreadLocalClients(
        base_url="https://api.example.test",
        token="t",
        api_version="2.15",
        connect_timeout_s=1,
        read_timeout_s=1,
    )
    seen: list[int] = []

    def grab() -> None:
        a, b = pool.get(), pool.get()
        assert a is b
        seen.append(id(a))

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(set(seen)) == 4 and len(pool) == 4
    pool.close_all()
    assert len(pool) == 0


def pristine_client_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx's own ``Client.send`` for this test, should an instrumentation (Sentry, set up by
    another test of this process) have wrapped it."""
    send = httpx.Client.send
    while hasattr(send, "__wrapped__"):
        send = send.__wrapped__
    monkeypatch.setattr(httpx.Client, "send", send)


def test_post_sends_what_httpx_client_post_would_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """``FinClient.post`` hands its request straight to the transport: method, URL (base URL
    with a path merged as httpx merges it), every header, body and timeouts must be what
    ``httpx.Client.post`` would have sent, for the default and an overridden version."""
    pristine_client_send(monkeypatch)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "thinking"})

    fin = FinClient(
        base_url="https://api.example.test/prefix",
        token="secret-token",
        api_version="2.15",
        connect_timeout_s=1.5,
        read_timeout_s=7,
        transport=httpx.MockTransport(handler),
    )
    body = {"conversation_id": "c1", "message": {"body": "héllo"}}
    fin.post("/fin/start", body, CallObservation())
    fin.post("/fin/reply", body, CallObservation(), version="Preview")
    fin.post("/fin/start", body, CallObservation())  # cached route and headers: same again
    ours = list(seen)
    seen.clear()
    plain = httpx.Client(
        base_url="https://api.example.test/prefix",
        headers=dict(fin._http.headers),
        timeout=fin._http.timeout,
        transport=httpx.MockTransport(handler),
    )
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    plain.post("/fin/start", content=content)
    plain.post("/fin/reply", content=content, headers={"Intercom-Version": "Preview"})
    plain.post("/fin/start", content=content)
    assert [str(r.url) for r in ours] == [
        "https://api.example.test/prefix/fin/start",
        "https://api.example.test/prefix/fin/reply",
        "https://api.example.test/prefix/fin/start",
    ]
    for mine, theirs in zip(ours, seen, strict=True):
        assert (mine.method, mine.url, mine.content) == (theirs.method, theirs.url, theirs.content)
        assert sorted(mine.headers.multi_items()) == sorted(theirs.headers.multi_items())
        assert mine.extensions["timeout"] == theirs.extensions["timeout"]
    assert ours[1].headers["intercom-version"] == "Preview"
    assert ours[2].headers["intercom-version"] == "2.15"
    assert sorted(fin._routes) == ["/fin/reply", "/fin/start"]  # the transport path was taken


def test_an_instrumented_client_send_still_sees_every_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sentry's httpx integration (and OpenTelemetry's) wrap ``httpx.Client.send``: while one
    does, calls go through the Client, so its breadcrumbs and headers are kept."""
    pristine_client_send(monkeypatch)
    real_send = httpx.Client.send
    wrapped: list[str] = []

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        wrapped.append(str(request.url))
        request.headers["x-instrumented"] = "1"
        return real_send(self, request, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", send)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "thinking"})

    client_for(handler).post("/fin/start", {"conversation_id": "c1"}, CallObservation())
    assert wrapped == ["https://api.example.test/fin/start"]
    assert seen[0].headers["x-instrumented"] == "1"


def test_post_goes_through_a_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx's ``HTTP_PROXY`` support is kept: the request reaches a real forward proxy, in
    absolute form, with its body."""
    pristine_client_send(monkeypatch)
    import http.server
    import threading

    got: list[tuple[str, bytes]] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            got.append((self.requestline, self.rfile.read(length)))
            payload = b'{"status":"thinking"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        fin = FinClient(
            base_url="http://fin.example.invalid",
            token="secret-token",
            api_version="2.15",
            connect_timeout_s=2,
            read_timeout_s=5,
        )
        reply = fin.post("/fin/start", {"conversation_id": "c1"}, CallObservation())
        fin.close()
    finally:
        server.shutdown()
        server.server_close()
    assert reply.body == {"status": "thinking"}
    assert got == [
        ("POST http://fin.example.invalid/fin/start HTTP/1.1", b'{"conversation_id":"c1"}')
    ]

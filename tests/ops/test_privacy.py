"""No customer data and no secret leaves a worker: not to Sentry, not to the worker log, not into
Redis (but for the dead-letter payload, which keeps a job for replay); and no trace header goes
to Fin.

A local HTTP server stands in for Sentry (``SENTRY_DSN=http://key@127.0.0.1:PORT/1``) and
records every envelope the workers send. A marker string is put in a message body, and real
worker processes meet: a task name they do not know, positional arguments, a 400 from Fin (the
simulator's fault injection), a connection error (Fin's base URL on a closed port) and a 401
(a wrong token). The token, the webhook secret and the Redis password (a Redis ACL user) are
checked for too. A second local server stands in for Fin and records the headers it receives.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
import sentry_sdk
from celery import Celery

from fin_relay import observability
from fin_relay.contract.names import Names
from fin_relay.contract.settings import WorkerSettings, load
from fin_relay.embedded_redis import free_port
from tests.fixtures.ingest import StreamReader
from tests.fixtures.worker import WorkerProcess, enqueue_job, start_kwargs, wait_for_result

pytestmark = [pytest.mark.integration, pytest.mark.redis_broker]
N = Names("fin")

TOKEN = f"fin-token-{uuid.uuid4().hex}"
WRONG_TOKEN = f"fin-token-regenerated-{uuid.uuid4().hex}"
WEBHOOK_SECRET = f"whsec-{uuid.uuid4().hex}"
REDIS_PASSWORD = f"redis-pw-{uuid.uuid4().hex}"
REDIS_USER = "privacy-test"


class Recorder:
    """A real HTTP server in a thread that records every request (path, headers, body; gzip
    bodies decompressed) and answers ``status`` with ``body``."""

    def __init__(self, status: int = 200, body: bytes = b"{}") -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.status, self.body = status, body
        self._lock = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    raw = gzip.decompress(raw)
                with recorder._lock:
                    recorder.requests.append((self.path, dict(self.headers.items()), raw))
                    recorder._lock.notify_all()
                self.send_response(recorder.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(recorder.body)))
                self.end_headers()
                self.wfile.write(recorder.body)

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        with self._lock:
            return [body.decode("utf-8", "replace") for _path, _headers, body in self.requests]

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float, what: str) -> str:
        """The first request body (text) matching ``predicate``, waiting for it."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                for _path, _headers, body in self.requests:
                    text = body.decode("utf-8", "replace")
                    if predicate(text):
                        return text
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no request with {what} within {timeout_s} s")
                self._lock.wait(remaining)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SentryStandIn(Recorder):
    """Receives what the Sentry SDK sends (envelopes, gzip-decompressed)."""

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/1"


@pytest.fixture
def sentry() -> Iterator[SentryStandIn]:
    server = SentryStandIn()
    yield server
    server.stop()


@pytest.fixture
def acl_redis_url(redis_url: str, redis_client: redis.Redis) -> Iterator[str]:
    """The test Redis through a user with a password (the default user stays as it is)."""
    redis_client.execute_command(
        "ACL", "SETUSER", REDIS_USER, "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all"
    )
    host_port = redis_url.split("://", 1)[1]
    yield f"redis://{REDIS_USER}:{REDIS_PASSWORD}@{host_port}"
    with contextlib.suppress(redis.RedisError):
        redis_client.execute_command("ACL", "DELUSER", REDIS_USER)


def every_redis_value(client: redis.Redis) -> Iterator[tuple[str, str]]:
    """``(key, text)`` of every key: strings, hashes, lists, sets, zsets, streams."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        readers: dict[str, Callable[[], Any]] = {
            "string": lambda k=key: client.get(k),
            "hash": lambda k=key: client.hgetall(k),
            "list": lambda k=key: client.lrange(k, 0, -1),
            "set": lambda k=key: sorted(client.smembers(k)),
            "zset": lambda k=key: client.zrange(k, 0, -1),
            "stream": lambda k=key: client.xrange(k),
        }
        reader = readers.get(kind)
        yield key, json.dumps(reader() if reader else None)


def test_no_customer_data_or_secret_reaches_sentry_logs_or_redis(
    redis_client: redis.Redis,
    acl_redis_url: str,
    sentry: SentryStandIn,
    fin_simulator: Callable[..., Any],
    celery_worker_proc: Callable[..., WorkerProcess],
) -> None:
    marker = f"PRIVATE-MARKER-{uuid.uuid4().hex}"
    dead = StreamReader(redis_client, N.dead)
    sim = fin_simulator(token=TOKEN)
    env = {
        "SENTRY_DSN": sentry.dsn,
        "FIN_WEBHOOK_SECRETS": WEBHOOK_SECRET,  # not the worker's: scrubbed all the same
        "REDIS_URL": acl_redis_url,  # the broker too
    }
    workers: list[WorkerProcess] = []

    # 1. unknown task name, positional arguments, a 400 from Fin
    workers.append(celery_worker_proc(base_url=sim.base_url, token=TOKEN, env=env))
    sender = Celery("other-service", broker=acl_redis_url, set_as_current=False)
    unknown_id, posargs_id = str(uuid.uuid4()), str(uuid.uuid4())
    sender.send_task(
        "fin.summarise",
        kwargs={"message": {"author": "user", "body": marker}},
        queue="fin.calls",
        task_id=unknown_id,
    )
    sender.send_task(
        "fin.start",
        args=[{"body": marker}],
        kwargs=start_kwargs("priv-pos"),
        queue="fin.calls",
        task_id=posargs_id,
    )
    sender.close()
    sim.control.set_faults(start={"queue": [400]})
    bad_request = enqueue_job(redis_client, "fin.start", start_kwargs("priv-400", marker))
    dead.wait_for_id(f"{unknown_id}.dead.unknown_task")
    dead.wait_for_id(f"{posargs_id}.dead.positional_arguments")
    outcome = wait_for_result(redis_client, bad_request)
    assert (outcome.type, outcome.data["reason"], outcome.data["status"]) == (
        "call.failed",
        "fin_error",
        400,
    )
    workers[-1].stop()

    # 2. a connection error: Fin's base URL on a port nothing listens on
    workers.append(
        celery_worker_proc(base_url=f"http://127.0.0.1:{free_port()}", token=TOKEN, env=env)
    )
    unreachable = enqueue_job(redis_client, "fin.start", start_kwargs("priv-conn", marker))
    outcome = wait_for_result(redis_client, unreachable, timeout_s=60)
    assert outcome.type == "call.failed" and outcome.data["reason"] == "max_attempts"
    workers[-1].stop()

    # 3. a 401: the token is wrong; the job is kept, an alert goes to Sentry (the positive
    # control: the collector does receive what the workers send)
    workers.append(celery_worker_proc(base_url=sim.base_url, token=WRONG_TOKEN, env=env))
    kept = enqueue_job(redis_client, "fin.start", start_kwargs("priv-401", marker))
    sentry.wait_for(lambda text: "token" in text and '"level":"error"' in text, 30, "401 alert")
    workers[-1].stop()  # a clean exit flushes what Sentry still holds
    assert redis_client.hget(N.job(kept), "outcome") is None  # kept, not dead-lettered

    sent = sentry.texts()
    assert sent, "the workers sent nothing to the Sentry stand-in"
    secrets = (TOKEN, WRONG_TOKEN, WEBHOOK_SECRET, REDIS_PASSWORD)
    for text in sent:
        assert marker not in text
        for secret in secrets:
            assert secret not in text
    for worker in workers:
        log_text = worker.logs()
        assert "ready" in log_text  # the log is the worker's
        assert marker not in log_text, worker.hostname
        for secret in secrets:
            assert secret not in log_text, worker.hostname

    # Redis: the marker only in the dead payloads (kept for replay) and in the 401 job, which
    # is still queued (the broker's own storage: its body, never its headers)
    holders = {key: text for key, text in every_redis_value(redis_client) if marker in text}
    assert any(key.startswith("fin:deadpayload:") for key in holders)
    for key, text in holders.items():
        if key.startswith("fin:deadpayload:"):
            continue
        assert key in ("fin.calls", "unacked"), key
        for message in _kombu_messages(text):
            if marker in json.dumps(message):
                assert message["headers"]["id"] == kept
                assert marker not in json.dumps(message["headers"])
    for key, text in every_redis_value(redis_client):
        for secret in secrets:
            assert secret not in text, key


def _kombu_messages(text: str) -> Iterator[dict[str, Any]]:
    """The kombu messages in a dumped ``fin.calls`` list or ``unacked`` hash."""
    value = json.loads(text)
    items = value.values() if isinstance(value, dict) else value
    for item in items:
        message = json.loads(item)
        if isinstance(message, list):  # unacked: [message, exchange, routing_key]
            message = message[0]
        yield message


def test_no_trace_header_goes_to_fin(
    redis_client: redis.Redis,
    redis_url: str,
    sentry: SentryStandIn,
    celery_worker_proc: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fin = Recorder(400, b'{"type":"error.list","errors":[{"code":"parameter_invalid"}]}')
    try:
        # in this process, inside a transaction (as a Celery task runs): the Sentry SDK's
        # defaults add the headers to a request to the stand-in (the control); fin-relay's
        # initialisation does not
        sentry_sdk.init(dsn=sentry.dsn)
        with sentry_sdk.start_transaction(name="control"):
            httpx.post(f"{fin.url}/control", json={})
        monkeypatch.setenv("REDIS_URL", redis_url)
        monkeypatch.setenv("FIN_API_TOKEN", TOKEN)
        monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
        assert observability.init_sentry(load(WorkerSettings), "worker")
        with sentry_sdk.start_transaction(name="fin-relay"):
            httpx.post(f"{fin.url}/fin-relay", json={})
        monkeypatch.delenv("SENTRY_DSN")
        sentry_sdk.init()  # off again
        control, ours = ({k.lower() for k in headers} for _path, headers, _b in fin.requests)
        assert {"baggage", "sentry-trace"} <= control
        assert not {"baggage", "sentry-trace"} & ours

        # a worker with Sentry on calls "Fin" without them
        celery_worker_proc(base_url=fin.url, token=TOKEN, env={"SENTRY_DSN": sentry.dsn})
        job_id = enqueue_job(redis_client, "fin.start", start_kwargs("trace-1"))
        assert wait_for_result(redis_client, job_id).data["status"] == 400
        path, headers, _body = fin.requests[-1]
        names = {k.lower() for k in headers}
        assert path == "/fin/start" and "authorization" in names
        assert "baggage" not in names and "sentry-trace" not in names
    finally:
        fin.stop()

"""``fin-relay dev``: everything on one machine, and a demo conversation shown live.

Starts an embedded Redis (or uses ``--redis-url``), the Fin simulator (callback pointed at the
ingest, a generated secret shared by both; or a real Fin with ``--fin-base-url``/``--fin-token``),
the webhook ingest and a worker as child processes; runs a demo conversation
(start -> Fin replies -> user replies -> resolved -> CSAT) and prints each call and event with
its timing; prints the settings and the commands to use it from another terminal; then keeps
running until Ctrl-C, SIGTERM or SIGHUP (the terminal closed), each of which stops every child.

When ``fin-relay dev`` itself is killed without a chance to stop them (SIGKILL, the OOM killer),
every child (the embedded redis-server included) gets SIGTERM from the kernel on Linux
(``prctl(PR_SET_PDEATHSIG)``: ``embedded_redis.parent_death_preexec``) and exits. macOS has no
such mechanism: there the children of a SIGKILLed ``fin-relay dev`` keep running until stopped
by hand (their pids are in ``ps``; each runs in a session of its own).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.names import Names
from fin_relay.contract.settings import ProducerSettings, load
from fin_relay.embedded_redis import (
    EmbeddedRedis,
    free_port,
    parent_death_preexec,
    port_is_free,
)
from fin_relay.producer import Producer

DEMO_USER = {"id": "demo-user-1", "name": "Ada Lovelace", "email": "ada@example.com"}

#: Ctrl-C, ``kill``/a supervisor, and the terminal closing: each one stops everything.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """Turns :data:`STOP_SIGNALS` into ``KeyboardInterrupt`` in the main thread.

    Inside :meth:`deferred` (a child being started) the interrupt waits until the child is
    recorded, so it is stopped with the others; after :meth:`shield` (the stop has begun) further
    signals are only noted, so a second Ctrl-C or a hang-up cannot cut the cleanup short.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._deferring = 0
        self._interrupted = False  # one KeyboardInterrupt per run: later signals are noted only
        self._shielded = False

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = signum
        self._interrupt()

    def _interrupt(self) -> None:
        if self._deferring or self._shielded or self._interrupted:
            return
        self._interrupted = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals arriving inside interrupt only at its end."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if self.received is not None:
            self._interrupt()

    def shield(self) -> None:
        """From now on signals are noted only (the stop has begun)."""
        self._shielded = True


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class DevStack:
    """The processes of one ``fin-relay dev`` run; :meth:`stop` ends them all."""

    log_dir: Path
    signals: StopSignals = field(default_factory=StopSignals)
    children: list[Child] = field(default_factory=list)
    redis_server: EmbeddedRedis | None = None

    def start_redis(self) -> EmbeddedRedis:
        """The embedded Redis, recorded before it starts (a stop during its start ends it)."""
        with self.signals.deferred():
            self.redis_server = EmbeddedRedis(appendonly=False, die_with_parent=True)
            return self.redis_server.start()

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log_path = self.log_dir / f"{name}.log"
        with self.signals.deferred(), log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # Linux: SIGTERM when fin-relay dev dies, even by SIGKILL (no threads exist in
                # this process yet: preexec_fn is safe here)
                preexec_fn=parent_death_preexec(),  # noqa: PLW1509
            )
            child = Child(name, proc, log_path)
            self.children.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                tail = child.log_path.read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"{child.name} exited with code {code}:\n  " + "\n  ".join(tail))

    def stop(self, timeout_s: float = 15.0) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(timeout=5)
        self.children.clear()
        if self.redis_server is not None:
            self.redis_server.stop()
            self.redis_server = None


def pick_port(preferred: int, what: str, out: Any) -> int:
    if preferred and port_is_free(preferred):
        return preferred
    port = free_port()
    if preferred:
        out(f"  port {preferred} for the {what} is taken; using {port} instead")
    return port


def wait_http(url: str, child: Child, stack: DevStack, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.05)
    raise RuntimeError(
        f"{child.name} did not answer at {url} within {timeout_s:.0f}s (log: {child.log_path})"
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-demo", action="store_true", help="start everything, skip the demo")
    parser.add_argument("--redis-url", help="use this Redis instead of starting an embedded one")
    parser.add_argument("--fin-base-url", help="a real Fin API base URL instead of the simulator")
    parser.add_argument("--fin-token", help="the token for --fin-base-url (or FIN_API_TOKEN)")
    parser.add_argument("--ingest-port", type=int, default=8000)
    parser.add_argument("--simulator-port", type=int, default=8090)
    parser.add_argument("--namespace", default="fin")
    parser.add_argument(
        "--reply-delay-ms",
        type=int,
        default=400,
        help="simulated time Fin takes before its webhooks",
    )
    parser.add_argument(
        "--exit-after-demo",
        action="store_true",
        help="stop everything once the demo finished (scripts and tests)",
    )
    parser.add_argument("--log-dir", default=".fin-relay/logs")


def _env(base: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass(frozen=True)
class DevSettings:
    """What a running ``fin-relay dev`` is: enough for processes of the user's own to join it."""

    redis_url: str
    namespace: str
    fin_base_url: str
    callback_url: str
    webhook_secret: str
    simulator_token: str | None  # None: a real Fin (the user's token is never printed)

    def producer_env(self) -> dict[str, str]:
        """What ``fin-relay enqueue|watch|conversation|dead`` and a producer need."""
        return {"REDIS_URL": self.redis_url, "FIN_RELAY_NAMESPACE": self.namespace}

    def worker_env(self) -> dict[str, str] | None:
        """What another worker needs (None with a real Fin: its token is not ours to print)."""
        if self.simulator_token is None:
            return None
        return {
            **self.producer_env(),
            "FIN_API_BASE_URL": self.fin_base_url,
            "FIN_API_TOKEN": self.simulator_token,
        }


def start_stack(args: argparse.Namespace, out: Any, stack: DevStack) -> DevSettings:
    """Start Redis (unless ``--redis-url``), the simulator (unless ``--fin-base-url``), the ingest
    and a worker as children recorded in ``stack``; return once the ingest answers."""
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    log_dir = stack.log_dir
    t0 = time.monotonic()
    if args.redis_url:
        redis_url = args.redis_url
        out(f"  redis      {redis_url} (yours)")
    else:
        server = stack.start_redis()
        redis_url = server.url
        out(f"  redis      {redis_url} (embedded, {server.origin})")
    py = [sys.executable, "-m", "fin_relay.cli"]
    secret = secrets.token_hex(16)
    ingest_port = pick_port(args.ingest_port, "ingest", out)
    callback = f"http://127.0.0.1:{ingest_port}/webhooks/fin"
    if args.fin_base_url:
        token = args.fin_token or os.environ.get("FIN_API_TOKEN", "")
        if not token:
            raise RuntimeError("--fin-base-url needs --fin-token or FIN_API_TOKEN")
        base_url = args.fin_base_url
        out(
            f"  fin        {base_url} (real Fin: its webhooks cannot reach {callback}; "
            "point your callback URL at a public tunnel to it)"
        )
    else:
        token = "dev-" + secrets.token_hex(8)
        sim_port = pick_port(args.simulator_port, "simulator", out)
        base_url = f"http://127.0.0.1:{sim_port}"
        sim_argv = [
            *py, "simulator", "--host", "127.0.0.1", "--port", str(sim_port), "--token", token,
            "--secret", secret, "--callback-url", callback,
            "--reply-delay-ms", str(args.reply_delay_ms),
        ]  # fmt: skip
        sim = stack.spawn("simulator", sim_argv, _env(dict(os.environ)))
        wait_http(f"{base_url}/_sim/requests", sim, stack)
        out(f"  simulator  {base_url} (Fin Agent API simulator)")
    env = _env(
        dict(os.environ),
        REDIS_URL=redis_url,
        FIN_RELAY_NAMESPACE=args.namespace,
        FIN_API_TOKEN=token,
        FIN_API_BASE_URL=base_url,
        FIN_WEBHOOK_SECRETS=secret,
        FIN_RELAY_ENVIRONMENT="development",
    )
    ingest = stack.spawn(
        "ingest", [*py, "ingest", "--host", "127.0.0.1", "--port", str(ingest_port)], env
    )
    worker = stack.spawn("worker", [*py, "worker", "--concurrency", "8"], env)
    wait_http(f"http://127.0.0.1:{ingest_port}/healthz", ingest, stack)
    out(f"  ingest     {callback}")
    out(f"  worker     pid {worker.proc.pid} (logs in {log_dir})")
    out(f"  ready in {time.monotonic() - t0:.1f}s")
    return DevSettings(
        redis_url=redis_url,
        namespace=args.namespace,
        fin_base_url=base_url,
        callback_url=callback,
        webhook_secret=secret,
        simulator_token=None if args.fin_base_url else token,
    )


# --- the demo --------------------------------------------------------------------------------


def _short(envelope: Envelope) -> str:
    data = envelope.data
    if envelope.type == "fin_replied":
        body = re.sub(r"<[^>]+>", "", str(data.get("message", {}).get("body", "")))
        return f"Fin: “{body[:70]}”"
    if envelope.type == "fin_status_updated":
        reason = f" ({data['reason']})" if data.get("reason") else ""
        return f"status → {data.get('status')}{reason}"
    if envelope.type == "csat_requested":
        return "Fin asks for a rating"
    if envelope.type.startswith("call."):
        resp = data.get("response") or {}
        status = resp.get("status") if isinstance(resp, dict) else None
        extra = f" status={status}" if status else ""
        return (
            f"{data.get('operation')} job={str(data.get('job_id'))[:8]} "
            f"attempts={data.get('attempts')} latency={data.get('latency_ms')}ms{extra}"
        )
    return json.dumps(data)[:80]


def tail(client: Any, names: Names, conversation_id: str, timeout_s: float) -> Iterator[Envelope]:
    """Envelopes of one conversation published after this call (positions taken now, not at
    the first ``next()``, so a result published before the caller starts iterating is kept)."""
    streams: dict[str, str] = {}
    for stream in (names.results, names.events):
        last = client.xrevrange(stream, count=1)
        streams[stream] = last[0][0] if last else "0-0"
    return _follow(client, streams, conversation_id, time.monotonic() + timeout_s)


def _follow(
    client: Any, streams: dict[str, str], conversation_id: str, deadline: float
) -> Iterator[Envelope]:
    while time.monotonic() < deadline:
        got = client.xread(streams, block=500, count=100)
        for stream, entries in got or []:
            for entry_id, fields in entries:
                streams[stream] = entry_id
                envelope = Envelope.from_stream_fields(fields)
                if envelope.conversation_id == conversation_id:
                    yield envelope


def run_demo(
    client: redis.Redis, producer: Producer, names: Names, out: Any, timeout_s: float = 60.0
) -> bool:
    conversation_id = f"demo-{uuid.uuid4().hex[:8]}"
    out(f"\ndemo conversation {conversation_id}")
    t0 = time.monotonic()

    def show(arrow: str, text: str) -> None:
        out(f"  {time.monotonic() - t0:6.2f}s {arrow} {text}")

    events = tail(client, names, conversation_id, timeout_s)
    first = "How can I see my account details?"
    producer.enqueue(
        "start",
        {
            "conversation_id": conversation_id,
            "user": dict(DEMO_USER),
            "message": {"author": "user", "body": first},
        },
    )
    show("→", f"enqueue fin.start  “{first}”")
    replied = csat = False
    for envelope in events:
        show("←", f"{envelope.type:<18} {_short(envelope)}")
        status = envelope.data.get("status")
        if envelope.type.startswith("call.") and envelope.type != "call.succeeded":
            out("  the demo call did not succeed; see the worker log")
            return False
        if status == "awaiting_user_reply" and not replied and envelope.type != "call.succeeded":
            replied = True
            text = "Thanks, that solved it!"
            producer.enqueue(
                "reply",
                {
                    "conversation_id": conversation_id,
                    "user": dict(DEMO_USER),
                    "message": {"author": "user", "body": text},
                },
            )
            show("→", f"enqueue fin.reply  “{text}”")
        if envelope.type == "csat_requested" and not csat:
            csat = True
            producer.enqueue("csat", {"conversation_id": conversation_id, "rating": "amazing"})
            show("→", "enqueue fin.csat   rating=amazing")
        if envelope.type == "call.succeeded" and envelope.data.get("operation") == "csat":
            out(
                f"demo finished in {time.monotonic() - t0:.2f}s: start → Fin replied → reply → "
                "resolved → complete → CSAT rated"
            )
            return True
    out("the demo did not finish in time; see the logs")
    return False


# --- how to use it from another terminal ----------------------------------------------------


def fin_relay_command() -> list[str]:
    """This installation's ``fin-relay`` by absolute path, so a printed command also works in a
    terminal where its virtualenv is not activated: the script that is running, else the one
    next to the interpreter, else ``python -m fin_relay.cli``."""
    running = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if running is not None and running.name == "fin-relay" and running.is_file():
        return [str(running.absolute())]
    beside = Path(sys.executable).absolute().with_name("fin-relay")
    if beside.is_file():
        return [str(beside)]
    return [str(Path(sys.executable).absolute()), "-m", "fin_relay.cli"]


def shell_command(env: dict[str, str], *args: str) -> str:
    """``env K=V ... /abs/fin-relay ARGS``, quoted: pastes into any POSIX shell (and fish)."""
    return shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *fin_relay_command(), *args])


def usage(settings: DevSettings, conversation_id: str) -> list[str]:
    """The lines printed once everything runs: the settings, then commands that paste as is."""
    lines = [
        "",
        "fin-relay is running. Its settings, for processes of your own:",
        f"  REDIS_URL={settings.redis_url}",
        f"  FIN_RELAY_NAMESPACE={settings.namespace}",
    ]
    if settings.simulator_token is not None:
        lines += [
            f"  FIN_API_BASE_URL={settings.fin_base_url}  (the simulator; its token and the "
            "webhook secret are local test credentials)",
            f"  FIN_API_TOKEN={settings.simulator_token}",
        ]
    else:
        lines.append(f"  FIN_API_BASE_URL={settings.fin_base_url}  (FIN_API_TOKEN: yours)")
    lines += [
        f"  FIN_WEBHOOK_SECRETS={settings.webhook_secret}",
        f"  webhooks: POST {settings.callback_url} with the header "
        "X-Fin-Agent-API-Webhook-Signature: sha256=<hex HMAC-SHA256 of the body, keyed by the "
        "secret>",
        "From another terminal (each command pastes as is):",
    ]
    env = settings.producer_env()
    conversation = ["--conversation-id", conversation_id, "--user-id", "u1"]
    lines += [
        "  watch events and results live:",
        "    " + shell_command(env, "watch"),
        "  start a conversation and wait for its outcome:",
        "    "
        + shell_command(
            env, "enqueue", "start", *conversation, "--message", "I need help", "--wait"
        ),
        "  then reply in it:",
        "    "
        + shell_command(
            env, "enqueue", "reply", *conversation, "--message", "Thanks, that solved it!", "--wait"
        ),
    ]
    worker_env = settings.worker_env()
    if worker_env is not None:
        lines += ["  one more worker:", "    " + shell_command(worker_env, "worker")]
    lines.append("Ctrl-C stops everything.")
    return lines


def _printer() -> Callable[[str], None]:
    """``print`` that survives the terminal going away (a hang-up): output is then dropped, so
    stopping the children is never cut short by an ``EIO``."""

    def out(text: str) -> None:
        try:
            print(text, flush=True)
        except OSError:
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.dup2(devnull, sys.stderr.fileno())
                os.close(devnull)

    return out


def run(args: argparse.Namespace) -> int:
    out = _printer()
    out("fin-relay dev: starting")
    stack = DevStack(log_dir=Path(args.log_dir).resolve())
    # Ctrl-C must work even when started with SIGINT ignored (e.g. as a background job), and
    # closing the terminal (SIGHUP) must not leave the embedded redis-server running.
    stack.signals.install()
    try:
        settings = start_stack(args, out, stack)
        names = Names(args.namespace)
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        ok = True
        if not args.no_demo:
            producer_settings = load(
                ProducerSettings,
                redis_url=settings.redis_url,
                fin_broker_url=None,
                fin_relay_namespace=args.namespace,
            )
            with Producer(producer_settings) as producer:
                ok = run_demo(client, producer, names, out)
        client.close()
        for line in usage(settings, f"try-{uuid.uuid4().hex[:8]}"):
            out(line)
        if args.exit_after_demo:
            return 0 if ok else 1
        while True:
            stack.check_alive()
            time.sleep(0.5)
    except KeyboardInterrupt:
        out("\nstopping…")
        return 0
    except RuntimeError as exc:
        out(f"fin-relay dev: {exc}")
        return 1
    finally:
        stack.signals.shield()
        stack.stop()
        out("all processes stopped")

"""Start and stop the simulator from Python: in a background thread, or as a subprocess.

    from fin_relay.simulator.server import SimulatorConfig, run_in_thread, SimulatorControl

    with run_in_thread(SimulatorConfig(callback_url="http://127.0.0.1:9000/hooks")) as sim:
        ...  # sim.base_url, sim.token, sim.secret
        SimulatorControl(sim.base_url).requests()

Use :func:`start_subprocess` for load (the simulator then never competes for the GIL of the
process under test).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx
import uvicorn

from fin_relay.simulator.app import SimulatorApp
from fin_relay.simulator.config import SimulatorConfig

__all__ = [
    "SimulatorConfig",
    "SimulatorControl",
    "SimulatorHandle",
    "SubprocessHandle",
    "ThreadHandle",
    "run_in_thread",
    "start_subprocess",
    "uvicorn_config",
]


def uvicorn_config(app: SimulatorApp) -> uvicorn.Config:
    """The fast stack: uvloop + httptools, no access log."""
    return uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        log_level="warning",
        timeout_keep_alive=30,
        # A hung request (timeout fault) must not hold up stop() for long.
        timeout_graceful_shutdown=2,
        backlog=4096,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket (``port=0`` picks a free port without a race)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


class SimulatorHandle(Protocol):
    """What both handles offer."""

    base_url: str
    token: str
    secret: str

    def stop(self) -> None: ...


class _HandleBase:
    def __init__(self, base_url: str, config: SimulatorConfig) -> None:
        self.base_url = base_url
        self.config = config
        self.token = config.token
        self.secret = config.secret

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    _control: SimulatorControl | None = None

    @property
    def control(self) -> SimulatorControl:
        """A control client for this simulator (closed by ``stop``)."""
        if self._control is None:
            self._control = SimulatorControl(self.base_url)
        return self._control

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ThreadHandle(_HandleBase):
    """A simulator served by uvicorn in a daemon thread with its own uvloop loop."""

    def __init__(self, base_url: str, config: SimulatorConfig, server: uvicorn.Server,
                 thread: threading.Thread, app: SimulatorApp) -> None:  # fmt: skip
        super().__init__(base_url, config)
        self.server = server
        self.thread = thread
        self.app = app

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop (pending webhooks are cancelled)."""
        self._close_control()
        self.server.should_exit = True
        self.thread.join(timeout_s)


def run_in_thread(
    config: SimulatorConfig | None = None,
    timeout_s: float = 10.0,
    clock: Callable[[], float] | None = None,
) -> ThreadHandle:
    """Start a simulator in a background thread; returns once it accepts connections.

    ``clock`` (default ``time.time``) drives the rate-limit windows, so tests can cross a window
    boundary without waiting.
    """
    config = SimulatorConfig() if config is None else config
    app = SimulatorApp(config, clock=time.time if clock is None else clock)
    sock = bind_socket(config.host, config.port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app))
    errors: list[BaseException] = []

    def serve() -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as exc:  # surfaced to the caller below
            errors.append(exc)
        finally:
            loop.close()
            sock.close()

    thread = threading.Thread(target=serve, name=f"fin-simulator-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError(f"simulator failed to start: {errors[:1]}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError("simulator did not start in time")
        time.sleep(0.005)
    host = f"[{config.host}]" if ":" in config.host else config.host
    return ThreadHandle(f"http://{host}:{port}", dataclasses.replace(config, port=port),
                        server, thread, app)  # fmt: skip


class SubprocessHandle(_HandleBase):
    """A simulator running as ``python -m fin_relay.simulator.cli``."""

    def __init__(
        self, base_url: str, config: SimulatorConfig, process: subprocess.Popen[bytes]
    ) -> None:
        super().__init__(base_url, config)
        self.process = process

    @property
    def pid(self) -> int:
        """The subprocess id (for CPU measurements)."""
        return self.process.pid

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        self._close_control()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)


def start_subprocess(
    config: SimulatorConfig | None = None, timeout_s: float = 20.0
) -> SubprocessHandle:
    """Start ``fin-relay simulator`` in a subprocess on ``config.port`` (0 = a free port).

    Waits until ``/_sim/health`` answers. The port is chosen here (bind, read, close) when 0.
    """
    config = SimulatorConfig() if config is None else config
    if config.port == 0:
        probe = bind_socket(config.host, 0)
        config = dataclasses.replace(config, port=probe.getsockname()[1])
        probe.close()
    cmd = [sys.executable, "-m", "fin_relay.simulator.cli", *config.to_args()]
    process = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=os.environ.copy()
    )
    host = f"[{config.host}]" if ":" in config.host else config.host
    handle = SubprocessHandle(f"http://{host}:{config.port}", config, process)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=1.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"simulator exited with {process.returncode} during start")
            try:
                if client.get(handle.base_url + "/_sim/health").status_code == 200:
                    return handle
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                handle.stop()
                raise TimeoutError("simulator subprocess did not answer in time")
            time.sleep(0.05)


class SimulatorControl:
    """A small synchronous client of the control API (``/_sim/``)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url + "/_sim", timeout=timeout_s)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def _call(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        response = self._client.request(method, path, json=json, params=params)
        response.raise_for_status()
        return response.json()

    def requests(self) -> list[dict[str, Any]]:
        """The request log, oldest first."""
        result: list[dict[str, Any]] = self._call("GET", "/requests")["requests"]
        return result

    def clear(self) -> None:
        """Clear the request log and the webhook delivery log."""
        self._call("DELETE", "/requests")
        self._call("DELETE", "/webhooks")

    def reset(self) -> None:
        """Clear logs, faults and conversations."""
        self._call("POST", "/reset")

    def set_faults(self, faults: dict[str, dict[str, Any]] | None = None, merge: bool = False,
                   **by_endpoint: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """Install faults, e.g. ``set_faults(start={"queue": [503, 503]})``; ``{}`` clears."""
        body = {**(faults or {}), **by_endpoint}
        result: dict[str, Any] = self._call(
            "POST", "/faults", json=body, params={"merge": "1"} if merge else None
        )
        return result["faults"]  # type: ignore[no-any-return]

    def configure(self, **updates: Any) -> dict[str, Any]:
        """Change configuration fields at run time; returns the (masked) configuration."""
        result: dict[str, Any] = self._call("POST", "/config", json=updates)["config"]
        return result

    def webhooks(self) -> list[dict[str, Any]]:
        """Every delivery attempt, oldest first."""
        result: list[dict[str, Any]] = self._call("GET", "/webhooks")["deliveries"]
        return result

    def webhook_state(self) -> dict[str, Any]:
        """Deliveries plus ``pending`` and ``generated`` counters."""
        result: dict[str, Any] = self._call("GET", "/webhooks")
        return result

    def conversation(self, conversation_id: str) -> dict[str, Any] | None:
        """One conversation's state, or ``None`` if unknown."""
        response = self._client.get(f"/conversations/{conversation_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def send_events(
        self,
        conversation_id: str,
        kind: str | None = None,
        events: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Send events to the callback URL now (``POST /_sim/conversations/{id}/events``):
        the on-demand ``kind`` (``unknown_status``, ``unknown_event``, ``thinking``,
        ``complete_reply``, ``reply_chunk``, ``extra_fields``) or the raw ``events`` as given.
        Returns the events queued; ``httpx.HTTPStatusError`` (404) for an unknown conversation.
        """
        if (kind is None) == (events is None):
            raise ValueError("pass either kind or events")
        body: dict[str, Any] = {"kind": kind} if events is None else {"events": events}
        result: list[dict[str, Any]] = self._call(
            "POST", f"/conversations/{conversation_id}/events", json=body
        )["events"]
        return result

    def wait_for(self, predicate: Callable[[SimulatorControl], Any], timeout_s: float = 10.0,
                 interval_s: float = 0.02) -> Any:  # fmt: skip
        """Poll ``predicate(self)`` until truthy; return its value or raise ``TimeoutError``."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate(self)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout_s} s")
            time.sleep(interval_s)

    def __enter__(self) -> SimulatorControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

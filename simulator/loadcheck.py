"""Side-by-side throughput check: simulator ``/fin/start`` vs a bare ASGI app on the same stack.

    python -m fin_relay.simulator.loadcheck [--duration-s 10] [--connections 200] [--latency-ms 50]

Starts three subprocesses (uvicorn, uvloop + httptools): a bare ASGI app that sleeps
``latency_ms`` and answers, a fast webhook sink, and the simulator with ``--latency-ms`` and its
callback URL on the sink. Runs ``wrk`` against each with unique conversation ids per request and
prints req/s, the ratio, and webhook counts. Requires ``wrk`` on PATH. The bench suite reuses
:func:`run_check`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from fin_relay.simulator.server import SimulatorConfig, bind_socket, start_subprocess

_BARE_LATENCY_S = float(os.environ.get("LOADCHECK_LATENCY_MS", "50")) / 1000.0
_SINK_COUNT = [0, 0]  # [to our path, to any other path (someone else's leftover sender)]
_SINK_PATH = os.environ.get("LOADCHECK_SINK_PATH", "/hooks")

WRK_LUA = """
local counter = 0
local prefix = tostring(math.random(1, 1e9))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
request = function()
  counter = counter + 1
  local body = '{"conversation_id":"lc-' .. prefix .. '-' .. counter .. '",' ..
    '"message":{"author":"user","body":"How can I see my account details?",' ..
    '"timestamp":"2025-01-24T10:01:20.000Z"},"user":{"id":"u-' .. counter .. '"}}'
  return wrk.format(nil, "/fin/start", nil, body)
end
"""


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The reference: read the body, sleep 50 ms, answer a small JSON (the reference upstream of the worker benchmarks)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await asyncio.sleep(_BARE_LATENCY_S)
    body = b'{"conversation_id":"x","status":"thinking"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"43")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def sink_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A fast webhook receiver: 200, empty body; ``GET`` answers the count received."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["method"] == "GET":
        payload = json.dumps(_SINK_COUNT).encode()
    else:
        _SINK_COUNT[0 if scope["path"] == _SINK_PATH else 1] += 1
        payload = b""
    headers = [(b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _serve(
    app: str, port: int, latency_ms: float = 50.0, sink_path: str = "/hooks"
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
           "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
           "--backlog", "4096"]  # fmt: skip
    env = {**os.environ, "LOADCHECK_LATENCY_MS": str(latency_ms), "LOADCHECK_SINK_PATH": sink_path}
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"{app} did not start")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    sock = bind_socket("127.0.0.1", 0)
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def _wrk(url: str, lua: Path, connections: int, duration_s: int) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(lua), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    return {
        "rps": rps,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "p99": p99.group(1) if p99 else None,
        "command": " ".join(cmd),
    }


def run_check(duration_s: int = 10, connections: int = 200, latency_ms: float = 50.0,
              reply_delay_ms: float = 500.0) -> dict[str, Any]:  # fmt: skip
    """Measure bare vs simulator; returns the figures (see module docstring)."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    procs: list[subprocess.Popen[bytes]] = []
    sim = None
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "start.lua"
        try:
            bare_port, sink_port = _free_port(), _free_port()
            procs.append(_serve("fin_relay.simulator.loadcheck:bare_app", bare_port, latency_ms))
            sink_path = f"/hooks/{uuid.uuid4().hex}"
            procs.append(
                _serve("fin_relay.simulator.loadcheck:sink_app", sink_port, sink_path=sink_path)
            )
            config = SimulatorConfig(
                callback_url=f"http://127.0.0.1:{sink_port}{sink_path}",
                rate_limit_per_minute=100_000_000,
                reply_delay_ms=reply_delay_ms,
                faults={"*": {"latency_ms": latency_ms}},
                log_limit=1000,
                log_bodies=False,
            )
            lua.write_text(WRK_LUA % {"token": config.token})
            sim = start_subprocess(config)
            _wrk(f"http://127.0.0.1:{bare_port}/fin/start", lua, connections, 2)  # warm-up
            bare_cpu_before = _cpu_s(procs[0].pid)
            bare = _wrk(f"http://127.0.0.1:{bare_port}/fin/start", lua, connections, duration_s)
            bare_cpu_s = _cpu_s(procs[0].pid) - bare_cpu_before
            _wrk(sim.base_url + "/fin/start", lua, connections, 2)
            cpu_before = _cpu_s(sim.pid)
            simulated = _wrk(sim.base_url + "/fin/start", lua, connections, duration_s)
            cpu_s = _cpu_s(sim.pid) - cpu_before
            deadline = time.monotonic() + 30
            state: dict[str, Any] = {}
            while time.monotonic() < deadline:
                state = httpx.get(sim.base_url + "/_sim/webhooks", timeout=10).json()
                if state["pending"] == 0:
                    break
                time.sleep(0.2)
            received, foreign = httpx.get(f"http://127.0.0.1:{sink_port}/", timeout=5).json()
        finally:
            if sim is not None:
                sim.stop()
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    return {
        "bare": bare,
        "simulator": simulated,
        "ratio": simulated["rps"] / bare["rps"],
        "bare_cpu_us_per_request": round(1e6 * bare_cpu_s / (bare["rps"] * duration_s), 1),
        "simulator_cpu_percent": round(100 * cpu_s / duration_s, 1),
        "simulator_cpu_us_per_start": round(1e6 * cpu_s / (simulated["rps"] * duration_s), 1),
        "webhooks_generated": state.get("generated"),
        "webhooks_received": received,
        "sink_foreign_posts": foreign,
        "webhook_stats": {k: v for k, v in state.items() if k != "deliveries"},
        "connections": connections,
        "latency_ms": latency_ms,
        "duration_s": duration_s,
    }


def main() -> int:
    """Command-line entry point; prints the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m fin_relay.simulator.loadcheck")
    parser.add_argument("--duration-s", type=int, default=10)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--reply-delay-ms", type=float, default=500.0)
    args = parser.parse_args()
    result = run_check(args.duration_s, args.connections, args.latency_ms, args.reply_delay_ms)
    print(json.dumps(result, indent=2))
    return 0 if result["ratio"] >= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Every ```python block of README.md runs as it is, as a script in its own process.

Each block gets what a reader's machine has: ``REDIS_URL`` (the test Redis), a real worker
process calling the Fin simulator over HTTP, and something already on the streams (one result,
one event) for consumers to read. A block ends by itself (exit status 0), or - when it installs
a SIGTERM handler, like a consumer that runs until stopped - once it has consumed what was on
the streams, it is sent SIGTERM and must then stop cleanly. Afterwards it must have had an
effect: every job it enqueued reached Fin and succeeded, or it consumed the streams' entries.

A block that truly cannot run standalone is marked in the README, right before it, with
``<!-- readme-test: skip (the reason) -->``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.names import Names
from fin_relay.contract.publish import publish

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(
    r"(?:<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->\s*\n)?"
    r"^```python\n(?P<code>.*?)^```",
    re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True)
class Block:
    line: int
    code: str
    skip_reason: str | None

    @property
    def runs_until_stopped(self) -> bool:
        return "signal.SIGTERM" in self.code


def readme_blocks() -> list[Block]:
    text = README.read_text()
    return [
        Block(text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("reason"))
        for m in BLOCK.finditer(text)
    ]


BLOCKS = readme_blocks()


def test_readme_has_python_examples_and_each_compiles() -> None:
    assert len(BLOCKS) >= 3, "the producer (sync, async) and consumer examples are gone"
    for block in BLOCKS:
        compile(block.code, f"README.md:{block.line}", "exec")  # a SyntaxError fails here


def _seed(client: redis.Redis, names: Names) -> list[str]:
    """One result and one event on the streams, as the worker publishes them; their ids."""
    seeded = [
        Envelope.now(
            id="seed-result",
            type="call.succeeded",
            conversation_id="seed-conversation",
            data={"job_id": "seed-job", "operation": "start", "attempts": 1},
        ),
        Envelope.now(
            id="seed-event",
            type="fin_status_updated",
            conversation_id="seed-conversation",
            data={"status": "awaiting_user_reply"},
        ),
    ]
    publish(client, names, [(names.results, seeded[0]), (names.events, seeded[1])], maxlen=1000)
    return [e.id for e in seeded]


def _consumed(client: redis.Redis, names: Names, ids: list[str]) -> bool:
    """Has some consumer group recorded every one of ``ids`` as processed?"""
    for key in client.scan_iter(names.consumed("*")):
        if all(client.zscore(key, envelope_id) is not None for envelope_id in ids):
            return True
    return False


def _await(predicate: Callable[[], bool], proc: subprocess.Popen[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the block exited early ({proc.returncode}):\n{out}\n{err}")
        assert time.monotonic() < deadline, "the block did not consume the streams' entries"
        time.sleep(0.05)


@pytest.mark.integration
@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
def test_readme_python_block_runs(
    block: Block,
    redis_url: str,
    redis_client: redis.Redis,
    fin_simulator: Callable[..., Any],
    celery_worker_proc: Callable[..., Any],
    tmp_path: Path,
) -> None:
    if block.skip_reason is not None:
        pytest.skip(f"marked in README.md: {block.skip_reason}")
    names = Names("fin")
    sim = fin_simulator()
    celery_worker_proc(base_url=sim.base_url)
    seeded = _seed(redis_client, names)
    script = tmp_path / "block.py"
    script.write_text(block.code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    env["REDIS_URL"] = redis_url
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if block.runs_until_stopped:
            _await(lambda: _consumed(redis_client, names, seeded), proc, 30)
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"README.md:{block.line} failed:\n{out}\n{err}"
    assert "Traceback" not in err, err

    results = [
        Envelope.from_stream_fields(fields) for _, fields in redis_client.xrange(names.results)
    ]
    enqueued = [r for r in results if r.id not in seeded]
    sent = {r["body"].get("conversation_id") for r in sim.control.requests() if r.get("body")}
    for result in enqueued:  # every job the block enqueued reached Fin and succeeded
        assert result.type == "call.succeeded", result
        assert result.conversation_id in sent, (result.conversation_id, sent)
        assert "call.succeeded" in out, out  # and the block shows the outcome it waited for
    consumed = _consumed(redis_client, names, seeded)
    if consumed:  # a consumer prints what it handled
        assert "call.succeeded" in out and "awaiting_user_reply" in out, out
    assert enqueued or consumed, f"README.md:{block.line} had no visible effect:\n{out}"


def test_skip_marker_is_recognised() -> None:
    text = (
        "intro\n<!-- readme-test: skip (needs a real Fin workspace) -->\n```python\nx = 1\n```\n"
        "```python\ny = 2\n```\n"
    )
    found = [(m.group("reason"), m.group("code")) for m in BLOCK.finditer(text)]
    assert found == [("needs a real Fin workspace", "x = 1\n"), (None, "y = 2\n")]


def test_a_block_that_fails_is_reported(tmp_path: Path) -> None:
    """The harness itself: the old producer block (sync and ``await`` lines mixed) is refused."""
    mixed = "from fin_relay.producer import Producer\nhandle = await Producer().start_async()\n"
    with pytest.raises(SyntaxError):
        compile(mixed, "README.md", "exec")

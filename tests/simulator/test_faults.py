"""Fault injection per endpoint, set at start or at run time through the control API."""

from __future__ import annotations

import random
import time

import httpx
import pytest

from fin_relay.simulator.faults import FaultSpec, FaultTable
from tests.simulator.helpers import client, example


def test_forced_queue_then_normal(fin_simulator):
    sim = fin_simulator()
    sim.control.set_faults(start={"queue": [503, 500]})
    with client(sim) as c:
        statuses = [
            c.post("/fin/start", json=example("start_request")).status_code for _ in range(3)
        ]
        other = c.post("/fin/csat", json=example("csat_request"))
    assert statuses == [503, 500, 200]
    assert other.status_code == 422  # faults are per endpoint (no CSAT survey: a real answer)
    log = sim.control.requests()
    assert [e["fault"] for e in log[:3]] == ["error", "error", None]


def test_injected_error_body_is_error_list(fin_simulator):
    sim = fin_simulator(faults={"*": {"error_rate": 1.0, "error_status": 503}})
    with client(sim) as c:
        response = c.post("/fin/reply", json=example("reply_request"))
    assert response.status_code == 503
    body = response.json()
    assert body["type"] == "error.list"
    assert body["errors"][0]["code"] == "service_unavailable"
    assert body["request_id"] == response.headers["x-request-id"]
    assert "x-ratelimit-remaining" in response.headers


def test_outage_window(fin_simulator):
    sim = fin_simulator()
    sim.control.set_faults({"*": {"outage_s": 60, "outage_status": 502}})
    with client(sim) as c:
        assert c.post("/fin/start", json=example("start_request")).status_code == 502
        assert c.post("/fin/csat", json=example("csat_request")).status_code == 502
        sim.control.set_faults({})
        assert c.post("/fin/start", json=example("start_request")).status_code == 200


def test_drop_and_timeout(fin_simulator):
    sim = fin_simulator()
    sim.control.set_faults(start={"queue": ["drop", "timeout"], "timeout_ms": 300})
    with client(sim) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.post("/fin/start", json=example("start_request"))
        with pytest.raises(httpx.ReadTimeout):
            c.post("/fin/start", json=example("start_request"), timeout=0.1)
        assert c.post("/fin/start", json=example("start_request")).status_code == 200
    assert [e["fault"] for e in sim.control.requests()] == ["drop", "timeout", None]


def test_latency_is_added(fin_simulator):
    sim = fin_simulator(faults={"capabilities": {"latency_ms": 150}})
    with client(sim) as c:
        begin = time.monotonic()
        c.post("/fin/capabilities", json=example("capabilities_request"))
        elapsed = time.monotonic() - begin
    assert elapsed >= 0.15  # a lower bound only: never flaky


def test_latency_distributions_are_bounded_and_non_negative():
    rng = random.Random(7)
    uniform = FaultSpec.from_dict(
        {"latency_ms": 50, "latency_dist": "uniform", "latency_jitter_ms": 10}
    )
    samples = [uniform.latency_s(rng) for _ in range(500)]
    assert min(samples) >= 0.040 and max(samples) <= 0.060
    for dist in ("normal", "exponential"):
        spec = FaultSpec.from_dict({"latency_ms": 5, "latency_dist": dist, "latency_jitter_ms": 50})
        assert min(spec.latency_s(rng) for _ in range(500)) >= 0.0


def test_error_rate_is_roughly_respected():
    table = FaultTable(random.Random(1))
    table.set({"start": {"error_rate": 0.3}})
    errors = sum(table.decide("start").action == "error" for _ in range(2000))
    assert 450 < errors < 750
    assert table.decide("reply").action is None


@pytest.mark.parametrize(
    "bad",
    [
        {"nope": {}},
        {"start": {"bogus": 1}},
        {"start": {"queue": [99]}},
        {"start": {"latency_dist": "zipf"}},
    ],
)
def test_bad_fault_specs_rejected(fin_simulator, bad):
    sim = fin_simulator()
    response = httpx.post(sim.base_url + "/_sim/faults", json=bad)
    assert response.status_code == 400
    assert "error" in response.json()


def test_stop_is_bounded_with_a_hung_request(fin_simulator):
    import threading

    sim = fin_simulator(faults={"start": {"timeout_rate": 1.0, "timeout_ms": 60_000}})
    outcome = []

    def call():
        try:
            with client(sim) as c:
                outcome.append(
                    c.post("/fin/start", json=example("start_request"), timeout=30).status_code
                )
        except httpx.HTTPError as exc:
            outcome.append(type(exc).__name__)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    sim.control.wait_for(lambda s: any(e["fault"] == "timeout" for e in s.requests()), 5)
    sim.stop(timeout_s=15)
    assert not sim.thread.is_alive()
    caller.join(15)
    assert outcome and outcome[0] != 200

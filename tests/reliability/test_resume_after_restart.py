"""After Redis comes back, workers consume and publish again within 2 s (default configuration).

kombu's own reconnect schedule sleeps 2, 4, 6, 8 ... s between attempts, so a worker whose broker
was away for a few seconds resumed up to 12.8 s after Redis returned; fin-relay's transport
retries at most 1 s apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from tests.fixtures.worker import enqueue_job, start_kwargs, wait_for_result

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.redis_broker]

#: The outage: long enough for kombu's schedule to be on its 4 s sleep when Redis returns.
OUTAGE_S = 3.0


@pytest.mark.parametrize("hard", [True, False], ids=["sigkill", "shutdown"])
def test_consuming_resumes_within_2s_of_redis_returning(
    hard: bool,
    own_redis: Callable,
    sim_process: Callable,
    worker_procs: Callable,
) -> None:
    server = own_redis(appendfsync="always")
    sim = sim_process(reply_delay_ms=50)
    worker_procs(server.url, base_url=sim.base_url, concurrency=4)  # default configuration
    client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
    try:
        before = enqueue_job(client, "fin.start", start_kwargs("before-outage"))
        assert wait_for_result(client, before).type == "call.succeeded"
        server.stop(hard=hard, cleanup=False)
        time.sleep(OUTAGE_S)  # the outage itself (the scenario), not a wait for an event
        server.start()  # same port, same data dir
        up_at = time.monotonic()
        job = enqueue_job(client, "fin.start", start_kwargs("after-outage"))
        result = wait_for_result(client, job, timeout_s=30)
        resumed_s = time.monotonic() - up_at
    finally:
        client.close()
    assert result.type == "call.succeeded"
    # enqueue -> worker takes it -> Fin call (simulator, ~ms) -> outcome published
    assert resumed_s < 2.0, f"first outcome {resumed_s:.2f} s after Redis returned"

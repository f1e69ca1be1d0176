"""Everything one worker process needs, built once from ``WorkerSettings`` and injected into the
plain functions behind the tasks (no hidden globals in the call path).
"""

from __future__ import annotations

import contextlib
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import redis

from fin_relay.contract import redisproto
from fin_relay.contract.fin_api import VersionPolicy
from fin_relay.contract.names import Names
from fin_relay.contract.settings import WorkerSettings, load
from fin_relay.worker import transport
from fin_relay.worker.batching import Coalescer
from fin_relay.worker.fin_client import ThreadLocalClients
from fin_relay.worker.gate import Gate
from fin_relay.worker.rate_limit import RateLimiter, token_fingerprint
from fin_relay.worker.sequencing import Sequencer


@dataclass
class Runtime:
    """Settings, names, the Redis client, the limiter, the sequencer and the per-thread Fin
    clients of one worker process."""

    settings: WorkerSettings
    names: Names
    redis: redis.Redis
    limiter: RateLimiter
    sequencer: Sequencer
    clients: ThreadLocalClients
    gate: Gate
    coalescer: Coalescer
    rng: random.Random = field(default_factory=random.Random)

    @property
    def versions(self) -> VersionPolicy:
        """The ``Intercom-Version`` each operation is checked against and sent with."""
        return self.settings.fin_versions

    def commit(self, pipe: Any, delivery_tag: str = "") -> list[Any]:
        """Run a task's terminal MULTI/EXEC ``pipe`` through the coalescer (one round trip,
        shared with other threads); -> its replies. When the broker is this Redis, the
        transaction also acknowledges ``delivery_tag`` (``transport.ack_commands``), and the
        ack Celery sends afterwards only does kombu's bookkeeping."""
        acks = transport.ack_commands(delivery_tag, self.redis)
        for command in acks or ():
            pipe.execute_command(*command)
        replies = self.coalescer.execute_pipeline(pipe)
        if acks:
            transport.acked_with_outcome(delivery_tag)
        return replies

    @classmethod
    def build(cls, settings: WorkerSettings) -> Runtime:
        names = Names(settings.fin_relay_namespace)
        client = redis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=settings.fin_relay_redis_timeout_s,
            socket_connect_timeout=settings.fin_relay_redis_timeout_s,
            health_check_interval=30,
        )
        token = settings.fin_api_token.get_secret_value()
        limiter = RateLimiter(
            client,
            names,
            budget=settings.window_budget,
            token_fp=token_fingerprint(token),
            probe_interval_s=settings.fin_relay_auth_probe_interval_s,
        )
        clients = ThreadLocalClients(
            base_url=settings.fin_api_base_url,
            token=token,
            api_version=settings.fin_api_version,
            connect_timeout_s=settings.fin_relay_connect_timeout_s,
            read_timeout_s=settings.fin_relay_read_timeout_s,
        )
        sequencer = Sequencer(client, names)
        coalescer = Coalescer(client)
        # The gate calls coalesce among themselves, on their own connection: a job's gate is
        # on its way to the call and does not wait behind other threads' outcome round trips.
        gate = Gate(client, names, sequencer, limiter, Coalescer(client))
        # If Redis does not answer yet, the scripts load on first use (NOSCRIPT).
        with contextlib.suppress(redis.RedisError):
            redisproto.load_all(client)
        return cls(
            settings=settings,
            names=names,
            redis=client,
            limiter=limiter,
            sequencer=sequencer,
            clients=clients,
            gate=gate,
            coalescer=coalescer,
        )

    def close(self) -> None:
        self.clients.close_all()
        self.redis.close()


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The process's runtime, built on first use (settings read from the environment)."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = Runtime.build(load(WorkerSettings))
    return _runtime


def close_runtime() -> None:
    """Close the per-thread HTTP clients and the Redis client (worker shutdown hook)."""
    global _runtime
    with _lock:
        runtime, _runtime = _runtime, None
    if runtime is not None:
        runtime.close()

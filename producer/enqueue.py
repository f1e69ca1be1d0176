"""The producer: typed, validated, idempotent, bounded enqueueing of Fin calls.

```python
from fin_relay.producer import Producer

producer = Producer()                         # settings from the environment; one per process
handle = producer.start(
    conversation_id="ext-123",
    user={"id": "u-1", "email": "ada@example.com"},
    message="My order has not arrived",       # or {"author": "user", "body": ..., "timestamp": ...}
    job_id="order-4711-start",                # optional: idempotent within the window
    metadata={"order": 4711},                 # comes back in every result
)
outcome = handle.wait(timeout_s=30)           # the call.succeeded|failed|skipped envelope
```

Every function has an ``*_async`` twin for callers inside an event loop; both are thin shells
over :func:`fin_relay.producer.prepare.prepare` (validation, stamping, options) and
:mod:`fin_relay.producer.transport` (the Lua script, or Celery for a non-Redis broker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Self, Unpack

import redis
import redis.asyncio

from fin_relay.contract.conversation import ConversationState
from fin_relay.contract.errors import BrokerUnavailableError
from fin_relay.contract.names import Names
from fin_relay.contract.settings import ProducerSettings, load
from fin_relay.producer import transport
from fin_relay.producer.conversation import get_state, get_state_async
from fin_relay.producer.handle import JobHandle
from fin_relay.producer.prepare import (
    CapabilitiesArgs,
    CsatArgs,
    EscalateArgs,
    PreparedJob,
    ProcedureRunArgs,
    ReplyArgs,
    StartArgs,
    prepare,
)
from fin_relay.producer.transport import Pushed, PushOptions


class Producer:
    """Enqueues Fin calls. Build one per process and share it (it holds connection pools).

    ``settings`` default to :class:`ProducerSettings` from the environment; ``redis_client`` /
    ``async_redis_client`` may be injected (they should have bounded timeouts, see
    :func:`fin_relay.producer.transport.sync_client`). ``use_celery`` forces (True) or forbids
    (False) Celery's ``send_task``; by default it is used only for a non-Redis broker.
    """

    def __init__(
        self,
        settings: ProducerSettings | None = None,
        *,
        redis_client: redis.Redis | None = None,
        async_redis_client: redis.asyncio.Redis | None = None,
        use_celery: bool | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load(ProducerSettings)
        self._names = Names(self.settings.fin_relay_namespace)
        self._versions = self.settings.fin_versions
        self.timeout_s = self.settings.fin_relay_enqueue_timeout_s
        self.window_s = self.settings.fin_relay_idempotency_window_s
        self._client = redis_client
        self._owns_client = redis_client is None
        self._reader: redis.Redis | None = None
        self._broker: redis.Redis | None = None
        # role -> (the loop owning the client, or None for an injected one; the client)
        self._async: dict[str, tuple[asyncio.AbstractEventLoop | None, redis.asyncio.Redis]] = {}
        if async_redis_client is not None:
            self._async["main"] = (None, async_redis_client)
        celery = use_celery if use_celery is not None else not self.settings.broker_is_redis
        self._celery = (
            transport.CeleryPublisher(self.settings.broker_url, self.timeout_s) if celery else None
        )
        # The broker is REDIS_URL itself: marker, sequence and LPUSH in one atomic script.
        self._direct = self._celery is None and self.settings.broker_url == self.settings.redis_url

    # --- clients ------------------------------------------------------------------------

    @property
    def names(self) -> Names:
        return self._names

    @property
    def redis_client(self) -> redis.Redis:
        """The bounded sync client of ``REDIS_URL``."""
        if self._client is None:
            self._client = transport.sync_client(self.settings.redis_url, self.timeout_s)
        return self._client

    def _broker_client(self) -> redis.Redis:
        if self._broker is None:
            self._broker = transport.sync_client(self.settings.broker_url, self.timeout_s)
        return self._broker

    def blocking_reader(self) -> redis.Redis:
        """A sync client for XREAD BLOCK (no read timeout; the BLOCK bounds each call)."""
        if self._reader is None:
            self._reader = transport.sync_client(
                self.settings.redis_url, self.timeout_s, blocking_reads=True
            )
        return self._reader

    def _async_client(self, role: str) -> redis.asyncio.Redis:
        # redis.asyncio clients belong to the loop that first used them: one per loop and role.
        loop = asyncio.get_running_loop()
        current = self._async.get(role)
        if current is not None and current[0] in (loop, None):
            return current[1]
        url = self.settings.broker_url if role == "broker" else self.settings.redis_url
        client = transport.async_client(url, self.timeout_s, blocking_reads=role == "reader")
        self._async[role] = (loop, client)
        return client

    def async_blocking_reader(self) -> redis.asyncio.Redis:
        return self._async_client("reader")

    # --- the generic entry points --------------------------------------------------------

    def enqueue(self, operation: str, arguments: Mapping[str, Any]) -> JobHandle:
        """Enqueue ``operation`` (``start``, ``reply``, ...) with Fin body fields + options."""
        return self.publish(prepare(operation, arguments, versions=self._versions))

    async def enqueue_async(self, operation: str, arguments: Mapping[str, Any]) -> JobHandle:
        """:meth:`enqueue` for an event loop: validation is pure, the publish is asyncio."""
        return await self.publish_async(prepare(operation, arguments, versions=self._versions))

    def publish(self, job: PreparedJob, *, idempotent: bool = True) -> JobHandle:
        """Publish a prepared job. ``idempotent=False`` ignores the marker (dead-letter replay).

        Broker = ``REDIS_URL`` (the default): one atomic script. Any other broker: the marker
        (and, for a broker that is not Redis, the conversation sequence number) is set in Redis
        first, then the message is published; if that fails, both are released and
        :class:`BrokerUnavailableError` is raised.
        """
        if self._direct:
            options = PushOptions(idempotent=idempotent)
            pushed = transport.push_sync(self.redis_client, job, self.names, self.window_s, options)
            return self._handle(job, pushed)
        number = self._celery is not None
        options = PushOptions(publish=False, idempotent=idempotent, number=number)
        pushed = transport.push_sync(self.redis_client, job, self.names, self.window_s, options)
        if pushed.created:
            try:
                if self._celery is not None:
                    self._celery.send(job)
                else:
                    transport.lpush_sync(self._broker_client(), job)
            except BrokerUnavailableError:
                transport.abandon_sync(self.redis_client, job, self.names, pushed.seq)
                raise
        return self._handle(job, pushed)

    async def publish_async(self, job: PreparedJob, *, idempotent: bool = True) -> JobHandle:
        """:meth:`publish` with ``redis.asyncio`` (or Celery in a thread), within the bound."""
        main, t = self._async_client("main"), self.timeout_s
        number = self._celery is not None
        options = PushOptions(publish=self._direct, idempotent=idempotent, number=number)
        pushed = await transport.push_async(
            main, job, self.names, self.window_s, timeout_s=t, options=options
        )
        if not self._direct and pushed.created:
            try:
                if self._celery is not None:
                    await self._celery.send_async(job)
                else:
                    await transport.lpush_async(self._async_client("broker"), job, t)
            except BrokerUnavailableError:
                await transport.abandon_async(main, job, self.names, pushed.seq, t)
                raise
        return self._handle(job, pushed)

    def _handle(self, job: PreparedJob, pushed: Pushed) -> JobHandle:
        return JobHandle(
            id=job.job_id,
            task=job.task,
            conversation_id=job.conversation_id,
            created=pushed.created,
            results_from=pushed.results_from,
            _source=self,
        )

    # --- typed functions, one per Fin operation -------------------------------------------

    def start(self, **arguments: Unpack[StartArgs]) -> JobHandle:
        """``POST /fin/start``: hand a new conversation to Fin."""
        return self.enqueue("start", arguments)

    def reply(self, **arguments: Unpack[ReplyArgs]) -> JobHandle:
        """``POST /fin/reply``: the user's next message in a conversation Fin handles."""
        return self.enqueue("reply", arguments)

    def ask(self, **arguments: Unpack[StartArgs]) -> JobHandle:
        """``POST /fin/ask``: a one-off question (same fields as start)."""
        return self.enqueue("ask", arguments)

    def escalate(self, **arguments: Unpack[EscalateArgs]) -> JobHandle:
        """``POST /fin/escalate``: hand the conversation (or user) to a human."""
        return self.enqueue("escalate", arguments)

    def csat(self, **arguments: Unpack[CsatArgs]) -> JobHandle:
        """``POST /fin/csat``: the user's satisfaction rating."""
        return self.enqueue("csat", arguments)

    def capabilities(self, **arguments: Unpack[CapabilitiesArgs]) -> JobHandle:
        """``POST /fin/capabilities``: what Fin can do for a user."""
        return self.enqueue("capabilities", arguments)

    def procedure_run(self, **arguments: Unpack[ProcedureRunArgs]) -> JobHandle:
        """``POST /fin/procedures/{procedure_id}/run`` (Preview)."""
        return self.enqueue("procedure_run", arguments)

    async def start_async(self, **arguments: Unpack[StartArgs]) -> JobHandle:
        """:meth:`start` inside an event loop."""
        return await self.enqueue_async("start", arguments)

    async def reply_async(self, **arguments: Unpack[ReplyArgs]) -> JobHandle:
        """:meth:`reply` inside an event loop."""
        return await self.enqueue_async("reply", arguments)

    async def ask_async(self, **arguments: Unpack[StartArgs]) -> JobHandle:
        """:meth:`ask` inside an event loop."""
        return await self.enqueue_async("ask", arguments)

    async def escalate_async(self, **arguments: Unpack[EscalateArgs]) -> JobHandle:
        """:meth:`escalate` inside an event loop."""
        return await self.enqueue_async("escalate", arguments)

    async def csat_async(self, **arguments: Unpack[CsatArgs]) -> JobHandle:
        """:meth:`csat` inside an event loop."""
        return await self.enqueue_async("csat", arguments)

    async def capabilities_async(self, **arguments: Unpack[CapabilitiesArgs]) -> JobHandle:
        """:meth:`capabilities` inside an event loop."""
        return await self.enqueue_async("capabilities", arguments)

    async def procedure_run_async(self, **arguments: Unpack[ProcedureRunArgs]) -> JobHandle:
        """:meth:`procedure_run` inside an event loop."""
        return await self.enqueue_async("procedure_run", arguments)

    # --- conversation state ------------------------------------------------------------

    def get_conversation(self, conversation_id: str) -> ConversationState:
        """One conversation's state: last Fin status, turn in progress, escalated, resolved."""
        return get_state(self.redis_client, self.names, conversation_id)

    async def get_conversation_async(self, conversation_id: str) -> ConversationState:
        return await get_state_async(
            self._async_client("main"), self.names, conversation_id, self.timeout_s
        )

    # --- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the sync clients this producer opened (async ones: :meth:`aclose`)."""
        clients = [self._reader, self._broker] + ([self._client] if self._owns_client else [])
        for client in clients:
            if client is not None:
                client.close()
        self._reader = self._broker = None
        if self._owns_client:
            self._client = None
        if self._celery is not None:
            self._celery.close()

    async def aclose(self) -> None:
        """Close the async clients opened in the running loop (sync ones: :meth:`close`)."""
        loop = asyncio.get_running_loop()
        for role, (owner, client) in list(self._async.items()):
            if owner is loop:
                await client.aclose()
                del self._async[role]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        self.close()


# --- module-level convenience: one default producer per process, from the environment -----

_default: Producer | None = None


def default_producer() -> Producer:
    """The process's default :class:`Producer` (settings from the environment), built once."""
    global _default
    if _default is None:
        _default = Producer()
    return _default


def set_default_producer(producer: Producer | None) -> None:
    """Replace (or with ``None`` forget) the default producer, e.g. in tests or at shutdown."""
    global _default
    _default = producer


def start(**arguments: Unpack[StartArgs]) -> JobHandle:
    """:meth:`Producer.start` on the default producer."""
    return default_producer().enqueue("start", arguments)


def reply(**arguments: Unpack[ReplyArgs]) -> JobHandle:
    """:meth:`Producer.reply` on the default producer."""
    return default_producer().enqueue("reply", arguments)


def ask(**arguments: Unpack[StartArgs]) -> JobHandle:
    """:meth:`Producer.ask` on the default producer."""
    return default_producer().enqueue("ask", arguments)


def escalate(**arguments: Unpack[EscalateArgs]) -> JobHandle:
    """:meth:`Producer.escalate` on the default producer."""
    return default_producer().enqueue("escalate", arguments)


def csat(**arguments: Unpack[CsatArgs]) -> JobHandle:
    """:meth:`Producer.csat` on the default producer."""
    return default_producer().enqueue("csat", arguments)


def capabilities(**arguments: Unpack[CapabilitiesArgs]) -> JobHandle:
    """:meth:`Producer.capabilities` on the default producer."""
    return default_producer().enqueue("capabilities", arguments)


def procedure_run(**arguments: Unpack[ProcedureRunArgs]) -> JobHandle:
    """:meth:`Producer.procedure_run` on the default producer."""
    return default_producer().enqueue("procedure_run", arguments)


async def start_async(**arguments: Unpack[StartArgs]) -> JobHandle:
    """:meth:`Producer.start_async` on the default producer."""
    return await default_producer().enqueue_async("start", arguments)


async def reply_async(**arguments: Unpack[ReplyArgs]) -> JobHandle:
    """:meth:`Producer.reply_async` on the default producer."""
    return await default_producer().enqueue_async("reply", arguments)


async def ask_async(**arguments: Unpack[StartArgs]) -> JobHandle:
    """:meth:`Producer.ask_async` on the default producer."""
    return await default_producer().enqueue_async("ask", arguments)


async def escalate_async(**arguments: Unpack[EscalateArgs]) -> JobHandle:
    """:meth:`Producer.escalate_async` on the default producer."""
    return await default_producer().enqueue_async("escalate", arguments)


async def csat_async(**arguments: Unpack[CsatArgs]) -> JobHandle:
    """:meth:`Producer.csat_async` on the default producer."""
    return await default_producer().enqueue_async("csat", arguments)


async def capabilities_async(**arguments: Unpack[CapabilitiesArgs]) -> JobHandle:
    """:meth:`Producer.capabilities_async` on the default producer."""
    return await default_producer().enqueue_async("capabilities", arguments)


async def procedure_run_async(**arguments: Unpack[ProcedureRunArgs]) -> JobHandle:
    """:meth:`Producer.procedure_run_async` on the default producer."""
    return await default_producer().enqueue_async("procedure_run", arguments)

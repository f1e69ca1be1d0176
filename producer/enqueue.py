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

Every function has an ``*_async`` twin for callers inside an event loop. Both, as methods of
:class:`Producer` and as module-level functions on :func:`default_producer`, are generated
from one table (:class:`Operation`: name, keyword arguments, docstring) over one
implementation: :func:`fin_relay.producer.prepare.prepare` (validation, stamping, options),
then :class:`fin_relay.producer.transport.PublishStrategy` (the publish's steps, written once)
run by a sync or an async driver (the Lua script, or Celery for a non-Redis broker).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeAlias, TypeVar, Unpack

import redis
import redis.asyncio

from fin_relay.contract.conversation import ConversationState
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
from fin_relay.producer.transport import Mark, Pushed, Send, Step

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Method: TypeAlias = Callable[Concatenate["Producer", _P], _R]
_Async: TypeAlias = Coroutine[Any, Any, JobHandle]

# --- the Fin operations: every method and function of each is generated from its row --------
#
# Typing: keyword arguments typed by a TypedDict can only be spelled ``**arguments:
# Unpack[StartArgs]`` in a ``def`` (``Unpack`` of a TypeVar is refused), so a row is an empty
# ``def``. Its Operation captures that signature as the ParamSpec ``_P`` and types all it
# generates with it: mypy checks ``producer.start(conversation_id=..., ...)`` against
# ``StartArgs`` exactly as it did the hand-written methods.


class Operation(Generic[_P]):
    """A Fin operation: its name (``signature``'s, less a leading ``_``), its keyword arguments
    (``signature``'s) and the docstring of ``Producer.<name>``.

    :meth:`methods` and :meth:`functions` build real functions (name, docstring and signature as
    ``help()`` shows them), each one call of :meth:`Producer.enqueue` or ``enqueue_async``.
    """

    __slots__ = ("arguments", "doc", "name")

    def __init__(self, signature: Callable[_P, None], doc: str) -> None:
        self.name = signature.__name__.lstrip("_")
        self.doc = doc
        # as the hand-written ``def`` had it: a string (``from __future__ import annotations``)
        self.arguments: str = signature.__annotations__["arguments"]

    def methods(self) -> tuple[_Method[_P, JobHandle], _Method[_P, _Async]]:
        """``Producer.<name>`` and ``Producer.<name>_async``."""
        name = self.name

        # ``self`` below is the Producer (the parameter name ``help()`` shows)
        def method(self: Producer, **arguments: Any) -> JobHandle:
            return self.enqueue(name, arguments)

        async def method_async(self: Producer, **arguments: Any) -> JobHandle:
            return await self.enqueue_async(name, arguments)

        twin = f":meth:`{name}` inside an event loop."
        sync = self._dress(method, "Producer.", self.doc)
        return sync, self._dress(method_async, "Producer.", twin)

    def functions(self) -> tuple[Callable[_P, JobHandle], Callable[_P, _Async]]:
        """``<name>`` and ``<name>_async`` of the module, on :func:`default_producer`."""
        name = self.name

        def function(**arguments: Any) -> JobHandle:
            return default_producer().enqueue(name, arguments)

        async def function_async(**arguments: Any) -> JobHandle:
            return await default_producer().enqueue_async(name, arguments)

        doc = f":meth:`Producer.{name}` on the default producer."
        doc_async = f":meth:`Producer.{name}_async` on the default producer."
        return self._dress(function, "", doc), self._dress(function_async, "", doc_async)

    def _dress(self, function: Callable[..., Any], owner: str, doc: str) -> Callable[..., Any]:
        function.__name__ = self.name + ("_async" if inspect.iscoroutinefunction(function) else "")
        function.__qualname__ = owner + function.__name__
        function.__doc__ = doc
        function.__annotations__ = {"arguments": self.arguments, "return": "JobHandle"}
        return function


def _operation(doc: str) -> Callable[[Callable[_P, None]], Operation[_P]]:
    """Decorator: the empty ``def`` below it becomes an :class:`Operation` documented ``doc``."""
    return lambda signature: Operation(signature, doc)


# The table: one row per Fin operation (name less the ``_``, its arguments, its docstring).
@_operation("``POST /fin/start``: hand a new conversation to Fin.")
def _start(**arguments: Unpack[StartArgs]) -> None: ...
@_operation("``POST /fin/reply``: the user's next message in a conversation Fin handles.")
def _reply(**arguments: Unpack[ReplyArgs]) -> None: ...
@_operation("``POST /fin/ask``: a one-off question (same fields as start).")
def _ask(**arguments: Unpack[StartArgs]) -> None: ...
@_operation("``POST /fin/escalate``: hand the conversation (or user) to a human.")
def _escalate(**arguments: Unpack[EscalateArgs]) -> None: ...
@_operation("``POST /fin/csat``: the user's satisfaction rating.")
def _csat(**arguments: Unpack[CsatArgs]) -> None: ...
@_operation("``POST /fin/capabilities``: what Fin can do for a user.")
def _capabilities(**arguments: Unpack[CapabilitiesArgs]) -> None: ...
@_operation("``POST /fin/procedures/{procedure_id}/run`` (Preview).")
def _procedure_run(**arguments: Unpack[ProcedureRunArgs]) -> None: ...


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
        direct = self._celery is None and self.settings.broker_url == self.settings.redis_url
        self._strategy = transport.PublishStrategy(direct=direct, celery=self._celery is not None)

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
        plan = self._strategy.plan(job, idempotent=idempotent)
        return self._handle(job, transport.drive_sync(plan, self._run))

    async def publish_async(self, job: PreparedJob, *, idempotent: bool = True) -> JobHandle:
        """:meth:`publish` with ``redis.asyncio`` (or Celery in a thread), within the bound."""
        plan = self._strategy.plan(job, idempotent=idempotent)
        return self._handle(job, await transport.drive_async(plan, self._run_async))

    def _run(self, step: Step) -> Any:
        """One step of :meth:`publish`, blocking."""
        if isinstance(step, Mark):
            client, window_s = self.redis_client, self.window_s
            return transport.push_sync(client, step.job, self.names, window_s, step.options)
        if isinstance(step, Send) and step.via == "redis":
            return transport.lpush_sync(self._broker_client(), step.job)
        if isinstance(step, Send):
            assert self._celery is not None  # the strategy sends via Celery only when it has one
            return self._celery.send(step.job)
        return transport.abandon_sync(self.redis_client, step.job, self.names, step.seq)

    async def _run_async(self, step: Step) -> Any:
        """One step of :meth:`publish_async`: asyncio, each within the bound."""
        main, t = self._async_client("main"), self.timeout_s
        if isinstance(step, Mark):
            return await transport.push_async(
                main, step.job, self.names, self.window_s, timeout_s=t, options=step.options
            )
        if isinstance(step, Send) and step.via == "redis":
            return await transport.lpush_async(self._async_client("broker"), step.job, t)
        if isinstance(step, Send):
            assert self._celery is not None
            return await self._celery.send_async(step.job)
        return await transport.abandon_async(main, step.job, self.names, step.seq, t)

    def _handle(self, job: PreparedJob, pushed: Pushed) -> JobHandle:
        return JobHandle(
            id=job.job_id,
            task=job.task,
            conversation_id=job.conversation_id,
            created=pushed.created,
            results_from=pushed.results_from,
            _source=self,
        )

    # --- typed functions, one per Fin operation (generated from the table above) -------

    start, start_async = _start.methods()
    reply, reply_async = _reply.methods()
    ask, ask_async = _ask.methods()
    escalate, escalate_async = _escalate.methods()
    csat, csat_async = _csat.methods()
    capabilities, capabilities_async = _capabilities.methods()
    procedure_run, procedure_run_async = _procedure_run.methods()

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


start, start_async = _start.functions()
reply, reply_async = _reply.functions()
ask, ask_async = _ask.functions()
escalate, escalate_async = _escalate.functions()
csat, csat_async = _csat.functions()
capabilities, capabilities_async = _capabilities.functions()
procedure_run, procedure_run_async = _procedure_run.functions()

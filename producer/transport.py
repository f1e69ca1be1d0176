"""Getting a prepared job onto the broker, sync or async, within a bounded time.

* Redis broker: one Lua script (``producer_enqueue.lua``) sets the idempotency marker
  (caller-chosen ids) and LPUSHes the hand-built Celery message in one atomic step; it also
  returns the results stream position the job's handle starts reading from. The async shell
  uses ``redis.asyncio``, so nothing blocks the event loop.
* Any other broker (``FIN_BROKER_URL=amqp://...``): Celery's ``send_task`` with connection and
  publish retries off, run in a thread and abandoned after the bound; the idempotency marker
  still lives in Redis.

Every failure to reach the broker or Redis becomes :class:`BrokerUnavailableError`.

Which of these steps a publish takes, in which order and what undoes what, is written once:
:meth:`PublishStrategy.plan` yields the steps (sans-IO); :func:`drive_sync` and
:func:`drive_async` run them, so the sync and async producers cannot diverge.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from fin_relay.contract.conversation import STATE_TTL_S
from fin_relay.contract.errors import BrokerUnavailableError
from fin_relay.contract.names import Names
from fin_relay.contract.redisproto import PRODUCER_ABANDON, PRODUCER_ENQUEUE, text
from fin_relay.producer.prepare import PreparedJob


@dataclass(frozen=True, slots=True)
class Pushed:
    """What ``producer_enqueue.lua`` said: ``created`` is False for a duplicate caller-chosen
    id."""

    created: bool
    results_from: str
    seq: int


def sync_client(url: str, timeout_s: float, *, blocking_reads: bool = False) -> redis.Redis:
    """A redis-py client whose every step is bounded: no retries, connect and read timeouts.

    Connect and read get half the bound each, so one command fails within ``timeout_s``.
    ``blocking_reads`` (XREAD BLOCK) leaves the read timeout to the command's own BLOCK.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s / 2,
        socket_timeout=None if blocking_reads else timeout_s / 2,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def async_client(
    url: str, timeout_s: float, *, blocking_reads: bool = False
) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`sync_client`."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s / 2,
        socket_timeout=None if blocking_reads else timeout_s / 2,
        retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def _unavailable(exc: BaseException, what: str) -> BrokerUnavailableError:
    # Only the exception class and redis-py's message (host:port, never the URL's password).
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return BrokerUnavailableError(f"{what} unavailable: {detail}")


@contextmanager
def redis_errors(what: str = "Redis") -> Iterator[None]:
    """Translate redis-py (and socket) failures into :class:`BrokerUnavailableError`."""
    try:
        yield
    except (redis.RedisError, OSError, TimeoutError) as exc:
        raise _unavailable(exc, what) from None


@dataclass(frozen=True, slots=True)
class PushOptions:
    """How to run ``producer_enqueue.lua``: LPUSH (or only mark), honour the marker, and number
    the job in its conversation (``number``: only for a broker that is not Redis; a Redis
    broker's take numbers every call job as it hands it out, whoever enqueued it)."""

    publish: bool = True
    idempotent: bool = True
    number: bool = False


def script_args(
    job: PreparedJob, names: Names, window_s: int, options: PushOptions
) -> tuple[list[str], list[str | int]]:
    """``(KEYS, ARGV)`` of ``producer_enqueue.lua`` for ``job``."""
    marker = names.job_idempotency(job.job_id) if options.idempotent and job.caller_chose_id else ""
    cid = job.conversation_id
    keys = [
        job.queue,
        names.results,
        names.job(job.job_id),
        marker,
        names.conversation_seq(cid) if cid and options.number else "",
    ]
    payload = job.payload if options.publish else ""
    return keys, [payload, window_s, STATE_TTL_S]


def abandon_args(job: PreparedJob, names: Names, seq: int) -> tuple[list[str], list[str | int]]:
    """``(KEYS, ARGV)`` of ``producer_abandon.lua`` for a job whose publish failed."""
    marker = names.job_idempotency(job.job_id) if job.caller_chose_id else ""
    cid = job.conversation_id or "-"
    keys = [marker, names.job(job.job_id), names.conversation_next(cid)]
    keys.append(names.conversation_done(cid))
    return keys, [seq if job.conversation_id else 0, STATE_TTL_S]


def _pushed(reply: Any) -> Pushed:
    created, position, seq = reply
    return Pushed(created=int(created) == 1, results_from=text(position), seq=int(seq))


def push_sync(
    client: redis.Redis,
    job: PreparedJob,
    names: Names,
    window_s: int,
    options: PushOptions = PushOptions(),
) -> Pushed:
    """Run ``producer_enqueue.lua`` (sync): mark + sequence + LPUSH (or no LPUSH:
    ``options.publish``)."""
    keys, args = script_args(job, names, window_s, options)
    with redis_errors("Redis broker" if options.publish else "Redis"):
        return _pushed(PRODUCER_ENQUEUE(client, keys, args))


async def push_async(
    client: redis.asyncio.Redis,
    job: PreparedJob,
    names: Names,
    window_s: int,
    *,
    timeout_s: float,
    options: PushOptions = PushOptions(),
) -> Pushed:
    """Run ``producer_enqueue.lua`` with ``redis.asyncio`` (never blocks the loop), within
    ``timeout_s``."""
    keys, args = script_args(job, names, window_s, options)
    with redis_errors("Redis broker" if options.publish else "Redis"):
        async with asyncio.timeout(timeout_s):
            return _pushed(await PRODUCER_ENQUEUE.acall(client, keys, args))


def abandon_sync(client: redis.Redis, job: PreparedJob, names: Names, seq: int) -> None:
    """The publish to the broker failed: forget the marker, release the sequence number."""
    keys, args = abandon_args(job, names, seq)
    with redis_errors():
        PRODUCER_ABANDON(client, keys, args)


async def abandon_async(
    client: redis.asyncio.Redis, job: PreparedJob, names: Names, seq: int, timeout_s: float
) -> None:
    keys, args = abandon_args(job, names, seq)
    with redis_errors():
        async with asyncio.timeout(timeout_s):
            await PRODUCER_ABANDON.acall(client, keys, args)


def lpush_sync(client: redis.Redis, job: PreparedJob) -> None:
    """Publish on a Redis broker that is not ``REDIS_URL`` (already marked there)."""
    with redis_errors("Redis broker"):
        client.lpush(job.queue, job.payload)


async def lpush_async(client: redis.asyncio.Redis, job: PreparedJob, timeout_s: float) -> None:
    with redis_errors("Redis broker"):
        async with asyncio.timeout(timeout_s):
            await client.lpush(job.queue, job.payload)


# --- the publish strategy: its steps written once, a sync and an async driver ---------------


@dataclass(frozen=True, slots=True)
class Mark:
    """Run ``producer_enqueue.lua`` on ``REDIS_URL``: the marker (and ``options.number``), and
    the LPUSH when ``options.publish`` (the broker is ``REDIS_URL``). Its result:
    :class:`Pushed`."""

    job: PreparedJob
    options: PushOptions


@dataclass(frozen=True, slots=True)
class Send:
    """Publish on a broker that is not ``REDIS_URL``: LPUSH to another Redis (``via="redis"``)
    or Celery's ``send_task`` (``via="celery"``)."""

    job: PreparedJob
    via: Literal["redis", "celery"]


@dataclass(frozen=True, slots=True)
class Abandon:
    """The send failed: forget the marker, release sequence number ``seq``
    (``producer_abandon.lua``)."""

    job: PreparedJob
    seq: int


Step = Mark | Send | Abandon
#: A publish in progress: yields steps, is sent each step's result (or has its exception
#: thrown in), returns what ``producer_enqueue.lua`` said.
Plan = Generator[Step, Any, Pushed]


@dataclass(frozen=True, slots=True)
class PublishStrategy:
    """How this producer's jobs reach the broker, from its settings.

    ``direct``: the broker is ``REDIS_URL``: one atomic script (marker, LPUSH). Otherwise the
    marker is set in Redis first (and, for Celery, i.e. a broker that is not Redis and does
    not number at its take, the conversation's sequence number), then the message is sent;
    if the send fails, both are released and the error is raised.
    """

    direct: bool
    celery: bool

    def plan(self, job: PreparedJob, *, idempotent: bool = True) -> Plan:
        """The steps publishing ``job`` (``idempotent=False`` ignores the marker)."""
        options = PushOptions(publish=self.direct, idempotent=idempotent, number=self.celery)
        pushed: Pushed = yield Mark(job, options)
        if pushed.created and not self.direct:
            try:
                yield Send(job, "celery" if self.celery else "redis")
            except BrokerUnavailableError:
                yield Abandon(job, pushed.seq)
                raise
        return pushed


def drive_sync(plan: Plan, run: Callable[[Step], Any]) -> Pushed:
    """Run ``plan``, each step with ``run`` (blocking I/O)."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as done:
            pushed: Pushed = done.value
            return pushed
        result, error = None, None
        try:
            result = run(step)
        except BaseException as exc:  # the plan decides, as straight-line code would
            error = exc


async def drive_async(plan: Plan, run: Callable[[Step], Awaitable[Any]]) -> Pushed:
    """Run ``plan``, each step awaited with ``run`` (asyncio I/O)."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as done:
            pushed: Pushed = done.value
            return pushed
        result, error = None, None
        try:
            result = await run(step)
        except BaseException as exc:  # the plan decides, as straight-line code would
            error = exc


# --- non-Redis brokers: Celery's own client ------------------------------------------------


def celery_app(broker_url: str, timeout_s: float) -> Any:
    """A private Celery app for publishing only: no retries anywhere, bounded connects."""
    from celery import Celery

    app = Celery("fin_relay_producer", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_connection_timeout=timeout_s,
        broker_connection_retry=False,
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=0,
        broker_transport_options={"max_retries": 0, "socket_timeout": timeout_s},
        task_publish_retry=False,
        task_ignore_result=True,
        task_serializer="json",
    )
    return app


def _send_task(app: Any, job: PreparedJob) -> None:
    app.send_task(
        job.task,
        kwargs=job.kwargs,
        task_id=job.job_id,
        queue=job.queue,
        routing_key=job.queue,
        retry=False,
        ignore_result=True,
    )


class CeleryPublisher:
    """Celery ``send_task`` in a small thread pool, abandoned after ``timeout_s``.

    kombu's own timeouts make a hung broker fail on its own; the pool's deadline is the bound
    the caller is promised even when they do not.
    """

    def __init__(self, broker_url: str, timeout_s: float) -> None:
        self._app = celery_app(broker_url, timeout_s)
        self._timeout_s = timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="fin-relay-publish"
        )

    def send(self, job: PreparedJob) -> None:
        future = self._pool.submit(_send_task, self._app, job)
        try:
            future.result(timeout=self._timeout_s)
        except concurrent.futures.TimeoutError:
            raise BrokerUnavailableError(
                f"broker unavailable: no answer within {self._timeout_s:g} s"
            ) from None
        except Exception as exc:  # kombu/amqp raise a zoo of classes; all mean "not queued"
            raise _unavailable(exc, "broker") from None

    async def send_async(self, job: PreparedJob) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, _send_task, self._app, job)
        try:
            await asyncio.wait_for(future, self._timeout_s)
        except TimeoutError:
            raise BrokerUnavailableError(
                f"broker unavailable: no answer within {self._timeout_s:g} s"
            ) from None
        except Exception as exc:
            raise _unavailable(exc, "broker") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._app.close()

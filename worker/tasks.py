"""The Celery tasks: thin wrappers around :func:`calls.run_call` and :func:`events.run_event`.

Task and queue names are fixed by the wire contract (``contract.names``); kwargs only.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import redis
from celery import Celery, Task

from fin_relay.contract.celery_wire import SEQ_HEADER
from fin_relay.contract.names import CALL_TASKS, TASK_EVENT, TASK_QUEUES
from fin_relay.worker import retries as retries_mod
from fin_relay.worker.calls import new_lease, release_lease, run_call
from fin_relay.worker.events import run_event
from fin_relay.worker.runtime import get_runtime
from fin_relay.worker.sequencing import Lease

log = logging.getLogger("fin_relay.worker.tasks")


def _unexpected_countdown_s(retries: int) -> float:
    """1, 2, 4 ... s after an unexpected error, capped at 30 s and at the longest countdown the
    guarantee rule allows for (``contract.guarantees``)."""
    cap = 30.0
    with contextlib.suppress(Exception):  # the error may be the runtime's own: keep 30 s then
        cap = min(cap, retries_mod.longest_countdown_s(get_runtime().settings))
    return float(min(cap, 2 ** min(retries, 5)))


def _await_redis(max_wait_s: float) -> bool:
    """Wait (bounded) until Redis answers again, so the job's re-publication can succeed.

    While Redis (the broker too, by default) is down, ``task.retry`` cannot publish and a task
    that fails would be acknowledged once the connection is back: the job would be lost. So the
    task holds its slot until Redis answers (at most half the visibility timeout), then
    re-publishes. Returns False when Redis stayed down.
    """
    runtime = get_runtime()
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        try:
            runtime.redis.ping()
            return True
        except redis.RedisError:
            time.sleep(0.5)
    return False


def _release(job_id: str, lease: Lease | None) -> None:
    """Best effort: free the job's lease before the job is re-published after an error (the
    gate may have taken it even if its reply was lost). If this fails too, the lease ends when
    it expires (``retries.lease_s``) and the re-published job is deferred until then."""
    if lease is None:
        return
    with contextlib.suppress(redis.RedisError):
        release_lease(get_runtime(), job_id, lease)


def _redis_down(task: Task, exc: Exception, lease: Lease | None = None) -> None:
    request = task.request
    runtime = get_runtime()
    max_wait_s = min(120.0, runtime.settings.fin_relay_visibility_timeout_s / 2)
    log.warning("job=%s redis error, holding the job until Redis answers: %s", request.id, exc)
    if _await_redis(max_wait_s):
        _release(request.id, lease)
    else:
        log.error(
            "job=%s Redis still down after %.0f s; the broker redelivers the job after "
            "the visibility timeout",
            request.id,
            max_wait_s,
        )
    raise task.retry(countdown=0.5) from None


def _take_seq(request: Any) -> int | None:
    """The conversation number the broker's take gave this delivery (transport fix 5)."""
    value = request.get(SEQ_HEADER)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _delivery_tag(request: Any) -> str:
    """The broker's delivery tag of this delivery (Redis broker), or ""."""
    properties = request.get("properties")
    tag = properties.get("delivery_tag") if isinstance(properties, dict) else None
    return tag if isinstance(tag, str) else ""


def call_task(task: Task, **kwargs: Any) -> None:
    """Body of every ``fin.*`` call task: one attempt; a deferral becomes ``task.retry``.

    Each delivery runs under its own lease of the job (``calls``): owned by this worker's
    heartbeat key (``request.hostname`` is the node name the heartbeat is written under) and
    a token unique to this delivery. It is released before any re-publication below.
    """
    request = task.request
    lease: Lease | None = None
    try:
        runtime = get_runtime()
        lease = new_lease(runtime.names, request.hostname)
        defer = run_call(
            runtime,
            task.name,
            request.id,
            kwargs,
            request.retries or 0,
            lease=lease,
            take_seq=_take_seq(request),
            delivery_tag=_delivery_tag(request),
        )
    except redis.RedisError as exc:
        _redis_down(task, exc, lease)  # keeps the job: waits for Redis, then re-publishes
    except Exception:
        log.exception("job=%s unexpected error; kept and retried", request.id)
        _release(request.id, lease)
        raise task.retry(countdown=_unexpected_countdown_s(request.retries or 0)) from None
    if defer is not None:
        log.debug("job=%s deferred %.2f s (%s)", request.id, defer.countdown_s, defer.reason)
        raise task.retry(countdown=defer.countdown_s)


def event_task(task: Task, **kwargs: Any) -> None:
    """Body of ``fin.event``."""
    request = task.request
    try:
        run_event(get_runtime(), kwargs, request.id, _delivery_tag(request))
    except redis.RedisError as exc:
        _redis_down(task, exc)


def register(app: Celery) -> dict[str, Task]:
    """Register every fin-relay task on ``app`` (no retry limit: the job hash counts attempts)."""
    tasks: dict[str, Task] = {}
    for name in (*CALL_TASKS.values(), TASK_EVENT):
        body = event_task if name == TASK_EVENT else call_task
        tasks[name] = app.task(
            name=name,
            bind=True,
            max_retries=None,
            queue=TASK_QUEUES[name],
            ignore_result=True,
            acks_late=True,
            reject_on_worker_lost=True,
        )(body)
    return tasks

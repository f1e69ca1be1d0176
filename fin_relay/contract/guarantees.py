"""The rules a worker configuration must keep for fin-relay's delivery guarantees: one function,
:func:`problems`, and every place that judges a configuration calls it.

* settings validation (``WorkerSettings``: a bad combination is a ``ConfigurationError`` at
  load, one line naming the variables, like any bad value);
* the worker's start-up refusal (``fin-relay worker`` and ``celery -A fin_relay.worker.app
  worker``, ``fin_relay.worker.startup``), which adds the Celery configuration it runs with;
* ``fin-relay doctor``.

Importable without the worker (no Celery, no kombu): settings validation uses it.

The rules
---------

1. **Visibility timeout** (a Redis broker: kombu's Redis transport redelivers a message that
   stayed unacked longer than ``FIN_RELAY_VISIBILITY_TIMEOUT_S``, to another worker)::

       FIN_RELAY_VISIBILITY_TIMEOUT_S
           > max(FIN_RELAY_BACKOFF_MAX_S, FIN_RELAY_AUTH_PROBE_INTERVAL_S)
             + FIN_RELAY_TASK_TIME_LIMIT_S

   The right side is the longest one message stays unacked in a worker. A worker never waits
   with a message in hand: every retry and every other wait (backoff, a 429 or
   ``Retry-After`` hint, the next rate-limit window, the fleet's 401 pause, a conversation's
   order or turn, another delivery's lease) re-publishes the job with a countdown
   (``task.retry(countdown=...)``) and acknowledges the message it ran. Celery hands a message
   with a countdown to a worker at once, which keeps it unacked until the countdown ends, runs
   it and acknowledges it after the run (``task_acks_late``). So one message is unacked for
   at most its countdown plus one run:

   - the countdown: ``fin_relay.worker.calls`` caps every countdown it gives at
     ``fin_relay.worker.retries.longest_countdown_s`` (:func:`longest_countdown_s` here, the
     same value): the retry backoff and a server's hint are capped at the backoff maximum
     (``plan_retry``), the auth probe waits the probe interval, and the order, turn and lease
     defers (``defer_delay_s``, at most 1 s) and quota waits are capped like the rest;
   - the run: ``FIN_RELAY_TASK_TIME_LIMIT_S`` (Celery's hard limit; under the threads pool,
     which cannot enforce it, rule 3 keeps the HTTP timeouts that bound a call under it).

   Not terms of it: the retry deadline and the sequence hold bound are spent over many
   messages (each wait is a new message), so neither keeps one message unacked. Waits that
   ``fin_relay.worker.tasks`` schedules itself are not capped by the settings: 0.5 s after a
   Redis error and up to 30 s after an unexpected exception; they stay inside the bound when
   the longest countdown is at least 30 s (the default) and can outlast it otherwise.

   A RabbitMQ broker has no visibility timeout (it redelivers when a consumer's connection
   drops): the rule does not apply there.

2. **Retry deadline** ``FIN_RELAY_RETRY_DEADLINE_S`` < 300 s: Fin de-duplicates a message by
   its timestamp within 5 minutes, so a retry is safe only inside that window.

3. **Task time limit** ``FIN_RELAY_TASK_TIME_LIMIT_S`` > ``FIN_RELAY_CONNECT_TIMEOUT_S`` +
   ``FIN_RELAY_READ_TIMEOUT_S``: a call that times out is a retry, not a killed task.

4. **Celery configuration** (when given): late acks, ``task_reject_on_worker_lost``, prefetch
   multiplier 1, no result backend (``fin_relay.worker.app.celery_config`` sets them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fin_relay.contract.settings import WorkerSettings

#: Fin de-duplicates messages by their timestamp within 5 minutes.
FIN_DEDUP_WINDOW_S = 300.0


class GuaranteeError(ValueError):
    """A configuration that breaks a guarantee; ``problems`` lists each rule broken."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def longest_countdown_s(settings: WorkerSettings) -> float:
    """The longest countdown a worker gives a re-published job (the cap of every countdown)."""
    return max(settings.fin_relay_backoff_max_s, settings.fin_relay_auth_probe_interval_s)


def longest_unacked_s(settings: WorkerSettings) -> float:
    """The longest one message stays unacked in a worker: its countdown plus one run."""
    return longest_countdown_s(settings) + settings.fin_relay_task_time_limit_s


def problems(settings: WorkerSettings, celery_conf: Mapping[str, Any] | None = None) -> list[str]:
    """Every rule ``settings`` (and, when given, the Celery configuration a worker would run
    with) breaks, one line each naming the variables; empty when the guarantees hold."""
    found: list[str] = []
    vt = settings.fin_relay_visibility_timeout_s
    needed = longest_unacked_s(settings)
    if settings.broker_is_redis and vt <= needed:
        found.append(
            f"FIN_RELAY_VISIBILITY_TIMEOUT_S ({vt:g}) must exceed the longest countdown "
            f"(FIN_RELAY_BACKOFF_MAX_S or FIN_RELAY_AUTH_PROBE_INTERVAL_S, "
            f"{longest_countdown_s(settings):g} s) plus FIN_RELAY_TASK_TIME_LIMIT_S "
            f"({settings.fin_relay_task_time_limit_s:g} s), {needed:g} s: the Redis broker "
            "would redeliver a job waiting for its countdown to a second worker"
        )
    deadline = settings.fin_relay_retry_deadline_s
    if deadline >= FIN_DEDUP_WINDOW_S:
        found.append(
            f"FIN_RELAY_RETRY_DEADLINE_S ({deadline:g}) must stay under Fin's "
            f"{FIN_DEDUP_WINDOW_S:g} s de-duplication window"
        )
    limit = settings.fin_relay_task_time_limit_s
    http_s = settings.fin_relay_connect_timeout_s + settings.fin_relay_read_timeout_s
    if limit <= http_s:
        found.append(
            f"FIN_RELAY_TASK_TIME_LIMIT_S ({limit:g}) must exceed the connect + read timeouts "
            f"(FIN_RELAY_CONNECT_TIMEOUT_S + FIN_RELAY_READ_TIMEOUT_S, {http_s:g} s)"
        )
    if celery_conf is not None:
        found += celery_problems(celery_conf)
    return found


def celery_problems(conf: Mapping[str, Any]) -> list[str]:
    """Rule 4: what the worker's Celery configuration must keep."""
    found = []
    if not conf.get("task_acks_late"):
        found.append("task_acks_late must be on (a killed worker would lose its job)")
    if not conf.get("task_reject_on_worker_lost"):
        found.append("task_reject_on_worker_lost must be on (jobs of a lost worker requeue)")
    if conf.get("worker_prefetch_multiplier") != 1:
        found.append("worker_prefetch_multiplier must be 1 (no job waits behind a busy slot)")
    if conf.get("result_backend"):
        found.append("no result backend: outcomes are published to the results stream")
    return found

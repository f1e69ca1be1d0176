"""The job contract: Celery keyword arguments of the ``fin.*`` call tasks, and dead letters.

A call task (``fin.start``, ``fin.reply``, ...) is called with **keyword arguments only**:

* the fields of Fin's request body for that endpoint (``conversation_id``, ``user``,
  ``message``, ``attachments``, ``conversation_metadata``, ``settings``, ``rating``, ...),
  exactly as in ``fin-agent-api.md``;
* ``procedure_id`` for ``fin.procedure_run`` (it travels in the URL path);
* optionally ``relay``: fin-relay's own per-job options (:class:`JobOptions`):
  ``{"expires_at": ISO-8601, "metadata": {...}, "correlation_id": "...", "enqueued_at_ms": int}``.

The Celery task id is the **job id**. ``message.timestamp`` is stamped once — by the producer
(:func:`stamp_timestamp`) or, for a job sent without one, by the worker, durably, before the
first attempt — so every retry carries the same timestamp and Fin's 5-minute de-duplication
makes retries safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, ValidationError

from fin_relay.contract.envelope import Envelope
from fin_relay.contract.errors import InvalidJobError
from fin_relay.contract.fin_api import (
    MESSAGE_OPERATIONS,
    OPERATIONS,
    IsoTime,
    VersionPolicy,
    dump_request,
    format_fin_time,
    parse_fin_time,
    request_model,
)
from fin_relay.contract.names import CALL_TASKS, TASK_OPERATIONS, TASK_QUEUES, Names
from fin_relay.contract.publish import add_publish

RELAY_KWARG = "relay"
PROCEDURE_KWARG = "procedure_id"
DEAD_JOB = "job.dead"
DEAD_EVENT = "event.dead"


class JobOptions(BaseModel):
    """fin-relay's per-job options, carried in the ``relay`` keyword argument."""

    model_config = ConfigDict(extra="forbid")

    expires_at: IsoTime | None = None
    metadata: dict[str, Any] | None = None
    correlation_id: str | None = None
    enqueued_at_ms: int | None = None
    #: Per-conversation sequence number, taken at enqueue with ``INCR names.conversation_seq``
    #: atomically with the enqueue (the producer does this). Without it the worker assigns one
    #: at first delivery, which orders jobs by dequeue time (see docs/worker.md).
    sequence: int | None = None

    def expired(self, now: datetime | None = None) -> bool:
        if self.expires_at is None:
            return False
        return parse_fin_time(self.expires_at) <= (now or datetime.now(UTC))


@dataclass(frozen=True)
class ValidatedJob:
    """A call job whose arguments matched Fin's request body for ``version``.

    ``body`` is what goes to Fin: the fields that were set, ``null`` fields left out, and both
    timestamps of every message that has one (``complete_timestamps``).
    """

    operation: str
    body: dict[str, Any]
    path: str
    options: JobOptions
    request: BaseModel
    version: str

    @property
    def conversation_id(self) -> str | None:
        value = self.body.get("conversation_id")
        return value if isinstance(value, str) else None

    @property
    def message_timestamp(self) -> str | None:
        message = self.body.get("message")
        if isinstance(message, dict):
            ts = message.get("timestamp")
            return ts if isinstance(ts, str) else None
        return None


def _field_errors(exc: ValidationError, prefix: str = "", version: str | None = None) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and version is not None:
            msg = f"not accepted by Intercom-Version {version}"
        parts.append(f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}")
    return "; ".join(parts)


DEFAULT_VERSIONS = VersionPolicy()


def validate_job(
    operation: str, kwargs: dict[str, Any], versions: VersionPolicy = DEFAULT_VERSIONS
) -> ValidatedJob:
    """Check a call job's keyword arguments against the request body of the ``Intercom-Version``
    it will be sent with (``versions``); raise :class:`InvalidJobError` naming the field (and the
    version, for a field that version does not accept)."""
    if operation not in OPERATIONS:
        raise InvalidJobError(f"unknown operation {operation!r}")
    path_template = OPERATIONS[operation][0]
    version = versions.version_for(operation)
    if version is None:
        raise InvalidJobError(
            f"invalid {operation} job: {path_template} exists only in Intercom-Version "
            f"Preview; FIN_API_VERSION is {versions.default} and "
            "FIN_RELAY_PREVIEW_OPERATIONS=refuse"
        )
    model = request_model(operation, version)
    if model is None:  # pragma: no cover - every version has every non-Preview-only operation
        raise InvalidJobError(f"invalid {operation} job: not in Intercom-Version {version}")
    body = dict(kwargs)
    raw_options = body.pop(RELAY_KWARG, None)
    try:
        options = JobOptions.model_validate(raw_options or {})
    except ValidationError as exc:
        raise InvalidJobError(f"invalid job options: {_field_errors(exc, 'relay.')}") from None
    path = path_template
    if "{procedure_id}" in path_template:
        procedure_id = body.pop(PROCEDURE_KWARG, None)
        if not isinstance(procedure_id, str | int) or not str(procedure_id):
            raise InvalidJobError("invalid job: procedure_id: Field required")
        path = path_template.format(procedure_id=quote(str(procedure_id), safe=""))
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        raise InvalidJobError(
            f"invalid {operation} job (Intercom-Version {version}): "
            f"{_field_errors(exc, version=version)}"
        ) from None
    return ValidatedJob(
        operation=operation,
        body=dump_request(request),
        path=path,
        options=options,
        request=request,
        version=version,
    )


def validate_task(
    task_name: str, kwargs: dict[str, Any], versions: VersionPolicy = DEFAULT_VERSIONS
) -> ValidatedJob:
    """:func:`validate_job` by Celery task name (``fin.start`` ...)."""
    operation = TASK_OPERATIONS.get(task_name)
    if operation is None:
        raise InvalidJobError(f"unknown task {task_name!r}")
    return validate_job(operation, kwargs, versions)


def stamp_timestamp(operation: str, kwargs: dict[str, Any], now: datetime | None = None) -> bool:
    """Set ``message.timestamp`` (ms precision, UTC) in place if the job has none.

    Returns True when it stamped. Only operations whose message Fin de-duplicates are stamped.
    """
    if operation not in MESSAGE_OPERATIONS:
        return False
    message = kwargs.get("message")
    if not isinstance(message, dict):
        return False
    if message.get("timestamp") or message.get("timestamp_ms"):
        return False
    message["timestamp"] = format_fin_time(now or datetime.now(UTC))
    return True


#: Fields of the worker's job hash (``names.job``) that a replay must reset so the job runs again.
REPLAY_RESET_FIELDS = (
    "outcome",
    "seq",
    "head_ms",
    "first_seen_ms",
    "ambiguous_since_ms",
    "failures",
)


def prepare_replay(pipe: Any, names: Names, job_id: str) -> None:
    """Queue the commands marking a dead job as replayed, before re-enqueueing it (same ids).

    The worker treats a job whose hash records an outcome as a duplicate delivery and does not
    call Fin again; a replay clears the outcome and bumps ``run`` (so the new result envelopes
    get new ids). The stamped ``message.timestamp`` (``ts``) and ``dead_entry`` are kept: the
    worker removes the dead entry once the replayed job succeeds.
    """
    pipe.hdel(names.job(job_id), *REPLAY_RESET_FIELDS)
    pipe.hincrby(names.job(job_id), "run", 1)


def request_summary(body: dict[str, Any]) -> dict[str, Any]:
    """What a published envelope may say about a request: no attachment data, no message body.

    Attachment *names and types* are kept; ``data`` never leaves; message bodies (customer data)
    are reduced to their length.
    """
    summary: dict[str, Any] = {}
    for key, value in body.items():
        if key == "attachments" and isinstance(value, list):
            summary[key] = [
                {k: v for k, v in a.items() if k in ("type", "name", "content_type", "url")}
                for a in value
                if isinstance(a, dict)
            ]
        elif key == "message" and isinstance(value, dict):
            summary[key] = {k: v for k, v in value.items() if k != "body"}
            if isinstance(value.get("body"), str):
                summary[key]["body_chars"] = len(value["body"])
        elif key == "user" and isinstance(value, dict):
            summary[key] = {"id": value.get("id")}
        elif key == "conversation_metadata" and isinstance(value, dict):
            summary[key] = {
                "history_items": len(value.get("history") or []),
                "attributes": sorted((value.get("attributes") or {}).keys()),
            }
        elif key in ("remark", "context") and isinstance(value, str):
            summary[f"{key}_chars"] = len(value)
        elif key == "message" and isinstance(value, str):  # /fin/escalate's message is text
            summary["message_chars"] = len(value)
        else:
            summary[key] = value
    return summary


def dead_letter(
    pipe: Any,
    names: Names,
    *,
    dead_id: str,
    envelope_id: str,
    kind: str,
    task: str,
    task_id: str,
    kwargs: dict[str, Any],
    reason: str,
    conversation_id: str | None,
    data: dict[str, Any],
    maxlen: int,
    record_entry: tuple[str, str] | None = None,
    queue: str | None = None,
    args: list[Any] | None = None,
    raw: dict[str, Any] | None = None,
) -> Envelope:
    """Queue a dead letter on a redis-py pipeline; return its envelope.

    * ``{ns}:deadpayload:{dead_id}`` keeps the original task, id, queue and kwargs (for replay;
      may contain attachment data and message bodies, so it is never published nor logged),
      plus ``args`` for a message sent with positional arguments and ``raw`` (the undecoded
      body, its content type and encoding) for one whose body could not be decoded: those two
      are kept for inspection, and ``fin-relay dead replay`` refuses them;
    * ``{ns}:dead`` (stream + channel) and the conversation channel get an envelope of type
      ``job.dead`` or ``event.dead`` whose ``data`` has ``reason``, ``dead_id``, ``task``,
      ``task_id`` and the caller's ``data`` (which must hold no attachment data nor message
      bodies);
    * ``conversation_id`` ``None`` (or ``""``): the envelope's is ``null`` and the stream entry
      has no ``conversation_id`` field (``Envelope.stream_fields``);
    * with ``record_entry=(hash key, field)``, the ``{ns}:dead`` entry id is written there by
      the same command as the entry (the worker's job hash ``dead_entry``);
    * ``queue``: the queue the message came from, when it is not the task's fixed queue (an
      unknown task name has none).
    """
    payload: dict[str, Any] = {
        "task": task,
        "task_id": task_id,
        "queue": queue if queue is not None else TASK_QUEUES.get(task, ""),
        "kwargs": kwargs,
    }
    if args is not None:
        payload["args"] = args
    if raw is not None:
        payload["raw"] = raw
    pipe.set(names.dead_payload(dead_id), json.dumps(payload, separators=(",", ":")))
    envelope = Envelope.now(
        id=envelope_id,
        type=kind,
        conversation_id=conversation_id or None,
        data={"reason": reason, "dead_id": dead_id, "task": task, "task_id": task_id, **data},
    )
    add_publish(pipe, names, names.dead, envelope, maxlen=maxlen, record_id=record_entry)
    return envelope


__all__ = [
    "CALL_TASKS",
    "DEAD_EVENT",
    "DEAD_JOB",
    "PROCEDURE_KWARG",
    "RELAY_KWARG",
    "REPLAY_RESET_FIELDS",
    "JobOptions",
    "ValidatedJob",
    "dead_letter",
    "prepare_replay",
    "request_summary",
    "stamp_timestamp",
    "validate_job",
    "validate_task",
]

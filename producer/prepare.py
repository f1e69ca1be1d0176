"""Turning a caller's arguments into a Celery job, as pure functions (no I/O).

The sync and async producers, the Celery fallback and the CLI all go through :func:`prepare`,
so validation, timestamp stamping and the ``relay`` options are written once (thin
sync/async shells over shared pure functions).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NotRequired, Required, TypedDict

from pydantic import BaseModel

from fin_relay.contract import celery_wire
from fin_relay.contract.errors import InvalidJobError
from fin_relay.contract.fin_api import (
    Attachment,
    ConversationMetadata,
    FinMessage,
    FinUser,
    ProcedureConversationMetadata,
    ProcedureSettings,
    Settings,
    VersionPolicy,
    format_fin_time,
)
from fin_relay.contract.jobs import (
    DEFAULT_VERSIONS,
    PROCEDURE_KWARG,
    RELAY_KWARG,
    JobOptions,
    stamp_timestamp,
    validate_job,
)
from fin_relay.contract.names import CALL_TASKS, TASK_OPERATIONS, TASK_QUEUES

#: Keyword arguments that are fin-relay options, not part of Fin's request body.
OPTION_KEYS = frozenset(
    {"job_id", "metadata", "correlation_id", "expires_at", "expires_in_s"},
)
#: Operations whose ``message`` may be given as plain text (a user message).
_TEXT_MESSAGE_OPERATIONS = frozenset({"start", "reply", "ask", "procedure_run"})
_MAX_JOB_ID_CHARS = 200

MessageArg = str | FinMessage | Mapping[str, Any]
UserArg = FinUser | Mapping[str, Any]
AttachmentArg = Attachment | Mapping[str, Any]


class JobOptionArgs(TypedDict, total=False):
    """fin-relay's per-job options, accepted by every enqueue function."""

    job_id: str
    metadata: Mapping[str, Any]
    correlation_id: str
    expires_at: datetime | str
    expires_in_s: float


class StartArgs(JobOptionArgs):
    """Keyword arguments of ``start`` and ``ask`` (``POST /fin/start``, ``/fin/ask``).

    ``settings`` only where the version takes it: ``start`` on Preview (never ``ask``)."""

    conversation_id: Required[str]
    message: Required[MessageArg]
    user: Required[UserArg]
    attachments: NotRequired[list[AttachmentArg]]
    conversation_metadata: NotRequired[ConversationMetadata | Mapping[str, Any]]
    settings: NotRequired[Settings | Mapping[str, Any]]


class ReplyArgs(JobOptionArgs):
    """Keyword arguments of ``reply`` (``POST /fin/reply``); ``settings`` on Preview only."""

    conversation_id: Required[str]
    message: Required[MessageArg]
    user: Required[UserArg]
    attachments: NotRequired[list[AttachmentArg]]
    settings: NotRequired[Settings | Mapping[str, Any]]


class EscalateArgs(JobOptionArgs):
    """Keyword arguments of ``escalate``: ``conversation_id`` *or* ``user`` (+ ``message``)."""

    conversation_id: NotRequired[str]
    user: NotRequired[UserArg]
    message: NotRequired[str]
    context: NotRequired[str]


class CsatArgs(JobOptionArgs):
    """Keyword arguments of ``csat`` (``POST /fin/csat``)."""

    conversation_id: Required[str]
    rating: Required[str]
    remark: NotRequired[str]


class CapabilitiesArgs(JobOptionArgs):
    """Keyword arguments of ``capabilities`` (``POST /fin/capabilities``)."""

    user: Required[UserArg]


class ProcedureRunArgs(JobOptionArgs):
    """Keyword arguments of ``procedure_run`` (``POST /fin/procedures/{procedure_id}/run``)."""

    procedure_id: Required[str]
    conversation_id: Required[str]
    user: Required[UserArg]
    message: NotRequired[MessageArg]
    conversation_metadata: NotRequired[ProcedureConversationMetadata | Mapping[str, Any]]
    settings: NotRequired[ProcedureSettings | Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class PreparedJob:
    """A validated job, ready to publish: what every transport needs and nothing more."""

    operation: str
    task: str
    queue: str
    job_id: str
    caller_chose_id: bool
    kwargs: dict[str, Any]
    payload: str
    conversation_id: str | None


def _plain(value: Any) -> Any:
    """Models to JSON-ready dicts, mappings and lists copied (the caller's objects stay untouched)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _body(operation: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    body = {k: _plain(v) for k, v in arguments.items() if k not in OPTION_KEYS and v is not None}
    message = body.get("message")
    if operation in _TEXT_MESSAGE_OPERATIONS and isinstance(message, str):
        body["message"] = {"author": "user", "body": message}
    return body


def _expires_at(arguments: Mapping[str, Any], now: datetime) -> str | None:
    expires_at = arguments.get("expires_at")
    expires_in_s = arguments.get("expires_in_s")
    if expires_at is not None and expires_in_s is not None:
        raise InvalidJobError("invalid job options: give expires_at or expires_in_s, not both")
    if expires_in_s is not None:
        if isinstance(expires_in_s, bool) or not isinstance(expires_in_s, int | float):
            raise InvalidJobError("invalid job options: expires_in_s: must be a number")
        if expires_in_s <= 0:
            raise InvalidJobError("invalid job options: expires_in_s: must be > 0")
        return format_fin_time(now + timedelta(seconds=expires_in_s))
    if isinstance(expires_at, datetime):
        if expires_at.tzinfo is None:
            raise InvalidJobError("invalid job options: expires_at: datetime must be tz-aware")
        return format_fin_time(expires_at)
    if expires_at is None or isinstance(expires_at, str):
        return expires_at
    raise InvalidJobError("invalid job options: expires_at: must be a datetime or ISO string")


def check_job_id(job_id: Any) -> str:
    """A caller-chosen job id: a non-empty printable string without spaces, <= 200 chars."""
    if (
        not isinstance(job_id, str)
        or not job_id
        or len(job_id) > _MAX_JOB_ID_CHARS
        or not job_id.isprintable()
        or any(c.isspace() for c in job_id)
    ):
        raise InvalidJobError(
            "invalid job options: job_id: must be 1-200 printable characters without spaces"
        )
    return job_id


def relay_options(arguments: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The ``relay`` keyword argument (:class:`JobOptions`) for ``arguments``' options."""
    metadata = arguments.get("metadata")
    raw = {
        "expires_at": _expires_at(arguments, now),
        "metadata": _plain(metadata) if metadata is not None else None,
        "correlation_id": arguments.get("correlation_id"),
        "enqueued_at_ms": int(now.timestamp() * 1000),
    }
    return {k: v for k, v in raw.items() if v is not None}


def prepare(
    operation: str,
    arguments: Mapping[str, Any],
    *,
    now: datetime | None = None,
    versions: VersionPolicy = DEFAULT_VERSIONS,
) -> PreparedJob:
    """Validate ``arguments`` (Fin body fields + options) against the request body of the
    ``Intercom-Version`` the job will be sent with (``versions``: ``FIN_API_VERSION`` and
    ``FIN_RELAY_PREVIEW_OPERATIONS``), stamp, and build the Celery message.

    Raises :class:`InvalidJobError` naming the offending field (and the version, for a field the
    version does not accept). ``message.timestamp`` is stamped once, here, unless the caller set
    one; the job then carries both ``timestamp`` and ``timestamp_ms`` for that instant.
    """
    if operation not in CALL_TASKS:
        raise InvalidJobError(f"unknown operation {operation!r} (one of {', '.join(CALL_TASKS)})")
    moment = now if now is not None else datetime.now(UTC)
    job_id_arg = arguments.get("job_id")
    job_id = check_job_id(job_id_arg) if job_id_arg is not None else str(uuid.uuid4())
    kwargs = _body(operation, arguments)
    stamp_timestamp(operation, kwargs, now=moment)
    kwargs[RELAY_KWARG] = relay_options(arguments, moment)
    validated = validate_job(operation, kwargs, versions)
    wire: dict[str, Any] = dict(validated.body)
    if PROCEDURE_KWARG in kwargs:
        wire[PROCEDURE_KWARG] = str(kwargs[PROCEDURE_KWARG])
    wire[RELAY_KWARG] = validated.options.model_dump(mode="json", exclude_none=True)
    return build(CALL_TASKS[operation], wire, job_id=job_id, caller_chose_id=job_id_arg is not None)


def build(
    task: str,
    kwargs: dict[str, Any],
    *,
    job_id: str,
    caller_chose_id: bool,
    queue: str | None = None,
) -> PreparedJob:
    """Wrap already-valid wire ``kwargs`` of ``task`` in a :class:`PreparedJob` (also replay's)."""
    target = queue if queue else TASK_QUEUES[task]
    _, payload = celery_wire.task_message(task, kwargs, task_id=job_id, queue=target)
    conversation_id = kwargs.get("conversation_id")
    return PreparedJob(
        operation=TASK_OPERATIONS.get(task, task),
        task=task,
        queue=target,
        job_id=job_id,
        caller_chose_id=caller_chose_id,
        kwargs=kwargs,
        payload=payload,
        conversation_id=conversation_id if isinstance(conversation_id, str) else None,
    )


__all__ = [
    "OPTION_KEYS",
    "CapabilitiesArgs",
    "CsatArgs",
    "EscalateArgs",
    "JobOptionArgs",
    "JobOptions",
    "PreparedJob",
    "ProcedureRunArgs",
    "ReplyArgs",
    "StartArgs",
    "build",
    "check_job_id",
    "prepare",
    "relay_options",
]

"""The Fin Agent API as typed models (pydantic v2).

Built to Intercom's OpenAPI descriptions of the Fin Agent API (2.14, 2.15, 2.16, Preview) and its
developer docs (2.17, which has no OpenAPI yet); docs/fin-api-versions.md has the tables.

Conventions:

* **Requests** (what we send) are modelled **per ``Intercom-Version``**
  (:func:`request_model`): a field the version's schema does not list is refused, naming the
  field and the version, instead of being sent (Fin would refuse or silently drop it).
  Operations that only Preview has are sent with ``Intercom-Version: Preview``
  (:class:`VersionPolicy`).
* **Responses and events** (what Fin sends) keep unknown fields (``extra="allow"``): Fin adds
  fields without notice, and we pass them through untouched.
* Timestamps stay the ISO-8601 *strings* Fin sends (``created_at_ms`` is a string despite its
  name), so a body re-serialises byte-for-byte equal to what was parsed; ``parse_fin_time``
  turns one into a ``datetime`` at the boundary where code needs it.
* Serialise with :func:`dump` (``exclude_unset``), which gives back exactly the JSON that was
  parsed.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "API_VERSIONS",
    "CSAT_RATINGS",
    "AskRequest",
    "Attachment",
    "AttributeErrors",
    "CapabilitiesRequest",
    "CapabilitiesResponse",
    "Capability",
    "ConversationMetadata",
    "CsatErrorBody",
    "CsatOption",
    "CsatRequest",
    "CsatRequestedEvent",
    "CsatResponse",
    "ErrorItem",
    "ErrorList",
    "EscalateRequest",
    "EscalateResponse",
    "FinEvent",
    "FinMessage",
    "FinRepliedEvent",
    "FinReplyChunkEvent",
    "FinResponse",
    "FinStatusUpdatedEvent",
    "FinUser",
    "GenericEvent",
    "OutgoingMessage",
    "PreviewReplyRequest",
    "PreviewStartRequest",
    "ProcedureConversationMetadata",
    "ProcedureRunRequest",
    "ProcedureRunResponse",
    "ProcedureSettings",
    "ReplyRequest",
    "Settings",
    "StartRequest",
    "ValidationError",
    "VersionPolicy",
    "complete_timestamps",
    "dump",
    "dump_request",
    "parse_event",
    "parse_fin_time",
    "request_model",
    "response_statuses",
    "status_event_statuses",
    "version_at_least",
]

MAX_ATTACHMENTS = 10
MAX_HISTORY = 10
MAX_ATTRIBUTES = 10
MAX_ESCALATE_TEXT = 10_000

#: ``Intercom-Version`` values that can call the Fin Agent API (>= 2.14, or ``Preview``).
API_VERSIONS: tuple[str, ...] = ("2.14", "2.15", "2.16", "2.17", "Preview")
PREVIEW = "Preview"
#: Operations whose paths only Intercom's Preview OpenAPI has (2.14-2.16 list start, reply and
#: csat only).
PREVIEW_ONLY_OPERATIONS: frozenset[str] = frozenset(
    {"ask", "escalate", "capabilities", "procedure_run"}
)


@dataclass(frozen=True)
class VersionPolicy:
    """Which ``Intercom-Version`` each operation is sent with.

    ``default`` is ``FIN_API_VERSION``. Preview-only operations go out with ``Preview`` whatever
    the default is (``preview_operations=True``, the default), or are refused
    (``FIN_RELAY_PREVIEW_OPERATIONS=refuse``).
    """

    default: str = "2.15"
    preview_operations: bool = True

    def version_for(self, operation: str) -> str | None:
        """The version ``operation`` is sent with; ``None`` when it is refused."""
        if operation in PREVIEW_ONLY_OPERATIONS and self.default != PREVIEW:
            return PREVIEW if self.preview_operations else None
        return self.default


CSAT_RATINGS: tuple[str, ...] = ("terrible", "bad", "ok", "good", "amazing")

_ISO_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$",
)


def parse_fin_time(value: str) -> datetime:
    """Parse one of Fin's ISO-8601 timestamps (``2025-01-24T10:00:00.123Z``) to an aware datetime."""
    if not _ISO_RE.match(value):
        raise ValueError(f"not an ISO-8601 timestamp: {value!r}")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_fin_time(moment: datetime) -> str:
    """Format a datetime the way Fin does: UTC, milliseconds, ``Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _check_iso(value: str) -> str:
    parse_fin_time(value)
    return value


IsoTime = Annotated[str, AfterValidator(_check_iso)]
"""An ISO-8601 timestamp kept as the string Fin sent (so it re-serialises unchanged)."""

_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")


def _check_rfc3339(value: str) -> str:
    if not _RFC3339_RE.match(value):
        raise ValueError(f"not an RFC 3339 date-time such as 2025-01-24T10:01:20.000Z: {value!r}")
    parse_fin_time(value)
    return value


RequestTime = Annotated[str, AfterValidator(_check_rfc3339)]
"""A timestamp we send: RFC 3339 (Intercom's ``format: date-time``), kept as given."""

Author = Literal["user", "agent", "fin"]
HistoryAuthor = Literal["user", "agent"]
Rating = Literal["terrible", "bad", "ok", "good", "amazing"]

#: Every conversation status any API version documents.
FinStatus = Literal[
    "thinking", "replying", "awaiting_user_reply", "escalated", "resolved", "complete"
]


def version_at_least(version: str, minimum: str) -> bool:
    """``Preview`` counts as newer than every numbered version."""
    if version == "Preview":
        return True
    if minimum == "Preview":
        return False
    try:
        return tuple(int(p) for p in version.split(".")) >= tuple(
            int(p) for p in minimum.split(".")
        )
    except ValueError:
        return False


def response_statuses(version: str) -> frozenset[str]:
    """Statuses a ``/fin/start`` or ``/fin/reply`` response may carry in ``version``."""
    base = {"thinking", "awaiting_user_reply", "escalated", "resolved", "complete"}
    if version_at_least(version, "2.16"):
        base.add("replying")
    return frozenset(base)


def status_event_statuses(version: str) -> frozenset[str]:
    """Statuses a ``fin_status_updated`` event may carry in ``version``.

    The 2.14/2.15 specs list escalated/resolved/complete, but the Guide shows
    ``awaiting_user_reply`` there too; 2.16 lists it; 2.17 adds ``thinking``.
    """
    base = {"awaiting_user_reply", "escalated", "resolved", "complete"}
    if version == "2.17":
        base.add("thinking")
    return frozenset(base)


def fin_replied_statuses(version: str) -> frozenset[str]:
    """Statuses of a ``fin_replied`` event by version (2.14/2.15: always awaiting_user_reply)."""
    if not version_at_least(version, "2.16"):
        return frozenset({"awaiting_user_reply"})
    statuses = {"replying", "awaiting_user_reply"}
    if version == "2.17":
        statuses.add("complete")
    return frozenset(statuses)


class _Request(BaseModel):
    """What we send: unknown fields are a mistake and are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class _FromFin(BaseModel):
    """What Fin sends: unknown fields are kept (Fin adds fields without notice)."""

    model_config = ConfigDict(extra="allow")


def _limit_attributes(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} attributes (got {len(value)})")
    return value


Attributes = Annotated[dict[str, Any], AfterValidator(_limit_attributes)]


class FinMessage(_Request):
    """``fin_agent_message`` as sent by us (history items and top-level messages).

    Every version's schema lists both ``timestamp`` and ``timestamp_ms``; fin-relay sends both
    for the same instant (:func:`complete_timestamps`), so they must not name two instants.
    """

    author: Author
    body: str
    timestamp: RequestTime | None = None
    timestamp_ms: RequestTime | None = None

    @model_validator(mode="after")
    def _one_instant(self) -> FinMessage:
        if self.timestamp is not None and self.timestamp_ms is not None:
            a, b = parse_fin_time(self.timestamp), parse_fin_time(self.timestamp_ms)
            if format_fin_time(a) != format_fin_time(b):
                raise ValueError(
                    "timestamp and timestamp_ms name different instants "
                    f"({self.timestamp} vs {self.timestamp_ms}); give one, or both equal"
                )
        return self


class HistoryMessage(FinMessage):
    """A ``conversation_metadata.history`` item: only ``user`` and ``agent`` authors, and a time.

    2.14–2.16 require ``timestamp``; on 2.17 one untimed item makes Fin ignore the whole
    history. fin-relay refuses an item without ``timestamp`` or ``timestamp_ms`` rather than
    inventing a time for it.
    """

    author: HistoryAuthor

    @model_validator(mode="after")
    def _timed(self) -> HistoryMessage:
        if self.timestamp is None and self.timestamp_ms is None:
            raise ValueError(
                "a history item needs timestamp or timestamp_ms (Fin requires one; on 2.17 "
                "an untimed item makes Fin ignore the whole history)"
            )
        return self


class OutgoingMessage(FinMessage):
    """The top-level ``message`` of start/reply/ask.

    ``timestamp`` is required in 2.14–2.16; fin-relay stamps it at enqueue (or, for a job sent
    without one, in the worker before the first attempt) when the caller left it out, so it is
    optional here.
    """


class FinUser(_Request):
    """``fin_agent_user``: your user; ``id`` maps to Intercom's ``user_id``."""

    id: Annotated[str, Field(min_length=1)]
    name: str | None = None
    email: str | None = None
    attributes: Attributes | None = None

    @field_validator("email")
    @classmethod
    def _email_shape(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+", value):
            raise ValueError("not an email address")
        return value


def _is_base64(value: str) -> bool:
    try:
        binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    return True


class Attachment(_Request):
    """``fin_agent_attachment``: ``url`` (publicly reachable) or ``file`` (base64 data)."""

    type: Literal["url", "file"]
    url: str | None = None
    name: str | None = None
    content_type: str | None = None
    data: str | None = None

    @model_validator(mode="after")
    def _required_by_type(self) -> Attachment:
        if self.type == "url":
            if not self.url or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", self.url):
                raise ValueError("a url attachment needs an absolute 'url'")
        else:
            missing = [f for f in ("name", "content_type", "data") if not getattr(self, f)]
            if missing:
                raise ValueError(f"a file attachment needs {', '.join(missing)}")
            if self.data is not None and not _is_base64(self.data):
                raise ValueError("a file attachment's data must be base64 (standard alphabet)")
        return self

    def summary(self) -> dict[str, Any]:
        """Name and type only: attachment data never goes into published envelopes."""
        out: dict[str, Any] = {"type": self.type}
        if self.name is not None:
            out["name"] = self.name
        if self.content_type is not None:
            out["content_type"] = self.content_type
        if self.url is not None:
            out["url"] = self.url
        return out


class ConversationMetadata(_Request):
    """``fin_agent_conversation_metadata``: the last <= 10 messages and <= 10 attributes."""

    history: Annotated[list[HistoryMessage], Field(max_length=MAX_HISTORY)] | None = None
    attributes: Attributes | None = None


class ProcedureConversationMetadata(_Request):
    """``/fin/procedures/{id}/run`` takes attributes only (no history)."""

    attributes: Attributes | None = None


class Settings(_Request):
    """``fin_agent_settings``: only Preview's ``/fin/start`` and ``/fin/reply`` take it.

    The 2.17 prose names a ``response_format`` without documenting its values or where it goes;
    no schema lists it, so it is refused.
    """

    follow_up_questions: bool | None = None
    email: bool | None = None


class ProcedureSettings(_Request):
    """``settings`` of ``/fin/procedures/{id}/run``: ``email`` only."""

    email: bool | None = None


AttachmentList = Annotated[list[Attachment], Field(max_length=MAX_ATTACHMENTS)]
ConversationId = Annotated[str, Field(min_length=1)]


class ReplyRequest(_Request):
    """Body of ``POST /fin/reply`` on 2.14–2.17 (no ``conversation_metadata``, no ``settings``)."""

    conversation_id: ConversationId
    message: OutgoingMessage
    user: FinUser
    attachments: AttachmentList | None = None


class StartRequest(ReplyRequest):
    """Body of ``POST /fin/start`` on 2.14–2.17: a reply's fields plus ``conversation_metadata``."""

    conversation_metadata: ConversationMetadata | None = None


class PreviewReplyRequest(ReplyRequest):
    """``POST /fin/reply`` on Preview: adds ``settings``."""

    settings: Settings | None = None


class PreviewStartRequest(StartRequest):
    """``POST /fin/start`` on Preview: adds ``settings``."""

    settings: Settings | None = None


class AskRequest(StartRequest):
    """Body of ``POST /fin/ask`` (Preview): start's fields, and no ``settings`` even there."""


class ProcedureRunRequest(_Request):
    """Body of ``POST /fin/procedures/{procedure_id}/run`` (the id travels in the path)."""

    conversation_id: ConversationId
    user: FinUser
    message: FinMessage | None = None
    conversation_metadata: ProcedureConversationMetadata | None = None
    settings: ProcedureSettings | None = None


class EscalateRequest(_Request):
    """Body of ``POST /fin/escalate``: either ``conversation_id`` or ``user``."""

    conversation_id: str | None = None
    user: FinUser | None = None
    message: Annotated[str, Field(max_length=MAX_ESCALATE_TEXT)] | None = None
    context: Annotated[str, Field(max_length=MAX_ESCALATE_TEXT)] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> EscalateRequest:
        if (self.conversation_id is None) == (self.user is None):
            raise ValueError("either conversation_id or user must be provided (not both)")
        if self.message is not None and self.user is None:
            raise ValueError("message is only accepted together with user")
        return self


class CsatRequest(_Request):
    """Body of ``POST /fin/csat``."""

    conversation_id: ConversationId
    rating: Rating
    remark: str | None = None


class CapabilitiesRequest(_Request):
    """Body of ``POST /fin/capabilities``."""

    user: FinUser


# --- responses ------------------------------------------------------------------------------


class AttributeErrors(_FromFin):
    """``fin_agent_attribute_errors``: non-fatal attribute problems returned with a 200."""

    user: dict[str, Any] | None = None
    conversation: dict[str, Any] | None = None


class FinResponse(_FromFin):
    """200 body of start, reply and ask."""

    conversation_id: str
    user_id: str | None = None
    status: FinStatus
    created_at_ms: IsoTime | None = None
    sse_subscription_url: str | None = None
    errors: AttributeErrors | None = None


class ProcedureRunResponse(FinResponse):
    """200 body of ``/fin/procedures/{id}/run``: as ask, plus ``procedure_id``."""

    procedure_id: str | None = None


class EscalateResponse(_FromFin):
    """200 body of ``/fin/escalate`` (existing conversation, or a new one from ``user``)."""

    conversation_id: str | None = None
    intercom_conversation_id: str | None = None
    status: Literal["escalated"]
    sse_subscription_url: str | None = None


class CsatResponse(_FromFin):
    """200 body of ``/fin/csat``."""

    conversation_id: str
    rating: Rating
    status: Literal["rated"]


class Capability(_FromFin):
    """One entry of ``/fin/capabilities``."""

    type: str
    id: str | None = None
    name: str | None = None
    description: str | None = None
    endpoint: str
    method: str


class CapabilitiesResponse(_FromFin):
    """200 body of ``/fin/capabilities``."""

    version: str | None = None
    capabilities: list[Capability]


class ErrorItem(_FromFin):
    """One item of ``error.list``."""

    code: str
    message: str | None = None
    field: str | None = None


class ErrorList(_FromFin):
    """Intercom's error envelope (every error except ``/fin/csat`` 422)."""

    type: Literal["error.list"]
    request_id: str | None = None
    errors: Annotated[list[ErrorItem], Field(min_length=1)]
    data: dict[str, Any] | None = None


class CsatErrorBody(_FromFin):
    """``/fin/csat`` 422 body: ``{"errors": {<field|base>: <message>}}`` (not error.list)."""

    errors: dict[str, str]


# --- events ---------------------------------------------------------------------------------


class RepliedMessage(_FromFin):
    """``message`` of ``fin_replied`` (``id`` since April 2026)."""

    id: str | None = None
    author: Author
    body: str
    timestamp_ms: IsoTime | None = None
    timestamp: IsoTime | None = None
    format: str | None = None
    sources: list[Any] | None = None


class _Event(_FromFin):
    event_name: str
    conversation_id: str
    created_at_ms: IsoTime

    @property
    def created_at(self) -> datetime:
        return parse_fin_time(self.created_at_ms)


class FinStatusUpdatedEvent(_Event):
    event_name: Literal["fin_status_updated"]
    user_id: str
    status: FinStatus
    reason: str | None = None


class FinRepliedEvent(_Event):
    event_name: Literal["fin_replied"]
    user_id: str
    message: RepliedMessage
    status: FinStatus
    stream_id: str | None = None


class FinReplyChunkEvent(_Event):
    event_name: Literal["fin_reply_chunk"]
    stream_id: str
    chunk_index: Annotated[int, Field(ge=0)]
    chunk_text: str
    status: FinStatus | None = None


class CsatOption(_FromFin):
    key: Rating
    emoji: str
    label: str


class CsatOptions(_FromFin):
    options: list[CsatOption]


class CsatRequestedEvent(_Event):
    event_name: Literal["csat_requested"]
    user_id: str
    csat: CsatOptions


class GenericEvent(_Event):
    """An event whose name fin-relay does not know yet (Fin adds events without notice)."""


KNOWN_EVENTS: dict[str, type[_Event]] = {
    "fin_status_updated": FinStatusUpdatedEvent,
    "fin_replied": FinRepliedEvent,
    "fin_reply_chunk": FinReplyChunkEvent,
    "csat_requested": CsatRequestedEvent,
}

FinEvent: TypeAlias = (
    FinStatusUpdatedEvent | FinRepliedEvent | FinReplyChunkEvent | CsatRequestedEvent | GenericEvent
)


def parse_event(payload: dict[str, Any] | bytes | str) -> FinEvent:
    """Parse a webhook/SSE event; unknown ``event_name`` values become a :class:`GenericEvent`.

    Raises ``pydantic.ValidationError`` naming the field when a known event is malformed.
    """
    if isinstance(payload, bytes | str):
        data = TypeAdapter(dict[str, Any]).validate_json(payload)
    else:
        data = payload
    name = data.get("event_name")
    model = KNOWN_EVENTS.get(name) if isinstance(name, str) else None
    if model is None:
        return GenericEvent.model_validate(data)
    return model.model_validate(data)  # type: ignore[return-value]


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON-ready dict of exactly the fields that were set (round-trips Fin's examples)."""
    return model.model_dump(mode="json", exclude_unset=True)


def dump_request(model: BaseModel) -> dict[str, Any]:
    """A request body to send: the fields that were set, a ``null`` field left out (no schema
    lets a request field be ``null``; values inside free-form ``attributes`` are kept), and both
    timestamps of every message (:func:`complete_timestamps`)."""
    body = model.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    message = body.get("message")
    if isinstance(message, dict):
        body["message"] = complete_timestamps(message)
    metadata = body.get("conversation_metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("history"), list):
        metadata["history"] = [
            complete_timestamps(item) if isinstance(item, dict) else item
            for item in metadata["history"]
        ]
    return body


def complete_timestamps(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with both ``timestamp`` and ``timestamp_ms`` when it has either.

    Every version's schema lists both (2.14–2.16 require ``timestamp``; live workspaces on newer
    versions are reported to require ``timestamp_ms``; 2.17 prefers ``timestamp_ms``), so both go
    out for the same instant. The one given is kept as given; the other is derived
    (``timestamp_ms`` in Fin's form, UTC with milliseconds). A message with neither is returned
    unchanged (the caller stamps it).
    """
    ts, ts_ms = message.get("timestamp"), message.get("timestamp_ms")
    if isinstance(ts, str) and ts_ms is None:
        return {**message, "timestamp_ms": format_fin_time(parse_fin_time(ts))}
    if isinstance(ts_ms, str) and ts is None:
        return {**message, "timestamp": ts_ms}
    return message


_STABLE_MODELS: dict[str, type[BaseModel]] = {
    "start": StartRequest,
    "reply": ReplyRequest,
    "csat": CsatRequest,
}
_PREVIEW_MODELS: dict[str, type[BaseModel]] = {
    "start": PreviewStartRequest,
    "reply": PreviewReplyRequest,
    "csat": CsatRequest,
    "ask": AskRequest,
    "escalate": EscalateRequest,
    "capabilities": CapabilitiesRequest,
    "procedure_run": ProcedureRunRequest,
}


def request_model(operation: str, version: str) -> type[BaseModel] | None:
    """The request body model of ``operation`` on ``version``; ``None`` when the version has no
    such operation (the ask/escalate/capabilities/procedure_run paths exist only in Preview)."""
    models = _PREVIEW_MODELS if version == PREVIEW else _STABLE_MODELS
    return models.get(operation)


#: Operation name -> (HTTP path template, widest request model (Preview's), response model).
#: The request model a version accepts is :func:`request_model`.
OPERATIONS: dict[str, tuple[str, type[BaseModel], type[BaseModel]]] = {
    "start": ("/fin/start", PreviewStartRequest, FinResponse),
    "reply": ("/fin/reply", PreviewReplyRequest, FinResponse),
    "ask": ("/fin/ask", AskRequest, FinResponse),
    "escalate": ("/fin/escalate", EscalateRequest, EscalateResponse),
    "csat": ("/fin/csat", CsatRequest, CsatResponse),
    "capabilities": ("/fin/capabilities", CapabilitiesRequest, CapabilitiesResponse),
    "procedure_run": (
        "/fin/procedures/{procedure_id}/run",
        ProcedureRunRequest,
        ProcedureRunResponse,
    ),
}

#: Operations whose body carries a user ``message`` with a de-duplication timestamp.
MESSAGE_OPERATIONS: frozenset[str] = frozenset({"start", "reply", "ask"})

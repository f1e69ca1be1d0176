"""Request validation for ``/fin/*``: Intercom's schema for the version, then Intercom's answer.

1. The operation must exist in the version's document, else 400 ``intercom_version_invalid``
   "Requested resource is not available in current API version." (``field`` Intercom-Version).
2. The body is validated against the version's closed request schema
   (:func:`fin_relay.simulator.spec.request_error_details`). The first error answers 400
   ``parameter_invalid`` with ``field`` = its dotted path; ``/fin/csat`` answers 422
   ``{"errors": {<field>: <message>}}`` instead (its documented, non-``error.list`` shape).
   The message is Intercom's documented text where one exists ("conversation_id is required",
   "Conversation history cannot contain more than 10 items", /fin/ask's "External Conversation ID
   is required" / "User ID is required", /fin/escalate's "Either conversation_id or user must be
   provided", /fin/csat's "Rating isn't an option"), else the schema validator's own message.
3. Limits Intercom documents only in prose (the schemas' descriptions), checked after the schema:
   at most 10 user / conversation attributes ("Cannot update more than 10 attributes at once."),
   ``url`` required on a ``url`` attachment and ``name``/``content_type``/``data`` on a ``file``
   attachment, and on 2.17 a top-level ``message`` with neither ``timestamp`` nor
   ``timestamp_ms`` → 422 "timestamp_ms is required".
"""

from __future__ import annotations

from typing import Any

from fin_relay.simulator import spec
from fin_relay.simulator.errors import ApiError

MAX_ATTRIBUTES = 10
NOT_IN_VERSION = "Requested resource is not available in current API version."
TOO_MANY_ATTRIBUTES = "Cannot update more than 10 attributes at once."
TOO_MANY_HISTORY = "Conversation history cannot contain more than 10 items"
ESCALATE_NEITHER = "Either conversation_id or user must be provided"
BAD_RATING = "Rating isn't an option"
#: Attachment fields required by ``type`` (documented in the field descriptions).
ATTACHMENT_FIELDS: dict[str, tuple[str, ...]] = {
    "url": ("url",),
    "file": ("name", "content_type", "data"),
}


def check_operation(version: str, operation: str) -> None:
    """400 ``intercom_version_invalid`` when ``version``'s document lacks ``operation``."""
    if operation not in spec.operations(version):
        raise ApiError(400, "intercom_version_invalid", NOT_IN_VERSION, "Intercom-Version")


def _message(operation: str, error: spec.SchemaError, body: dict[str, Any]) -> str:
    field = error.field
    if error.keyword == "required" and field:
        if operation == "ask" and field == "conversation_id":
            return "External Conversation ID is required"
        if operation == "ask" and field in ("user", "user.id"):
            return "User ID is required"
        return f"{field} is required"
    if error.keyword == "maxItems" and error.path[-1:] == ("history",):
        return TOO_MANY_HISTORY
    if (
        operation == "escalate"
        and error.keyword == "oneOf"
        and not error.path
        and "conversation_id" not in body
        and "user" not in body
    ):
        return ESCALATE_NEITHER
    return error.message


def _csat_error(field: str, message: str) -> ApiError:
    return ApiError(422, "unprocessable_entity", message, raw_body={"errors": {field: message}})


def _prose_limits(operation: str, body: dict[str, Any]) -> ApiError | None:
    user = body.get("user")
    if isinstance(user, dict):
        attrs = user.get("attributes")
        if isinstance(attrs, dict) and len(attrs) > MAX_ATTRIBUTES:
            return ApiError(400, "parameter_invalid", TOO_MANY_ATTRIBUTES, "user.attributes")
    metadata = body.get("conversation_metadata")
    if isinstance(metadata, dict):
        attrs = metadata.get("attributes")
        if isinstance(attrs, dict) and len(attrs) > MAX_ATTRIBUTES:
            field = "conversation_metadata.attributes"
            return ApiError(400, "parameter_invalid", TOO_MANY_ATTRIBUTES, field)
    attachments = body.get("attachments")
    if isinstance(attachments, list):
        for index, item in enumerate(attachments):
            if not isinstance(item, dict):
                continue
            for name in ATTACHMENT_FIELDS.get(item.get("type", ""), ()):
                if not item.get(name):
                    field = f"attachments.{index}.{name}"
                    return ApiError(400, "parameter_invalid", f"{field} is required", field)
    return None


def check_body(version: str, operation: str, body: dict[str, Any]) -> None:
    """Raise the :class:`ApiError` Intercom would answer for an invalid ``body``."""
    errors = spec.request_error_details(version, operation, body)
    if errors:
        first = errors[0]
        if operation == "csat":
            if first.path[:1] == ("rating",):
                raise _csat_error("rating", BAD_RATING)
            raise _csat_error(first.field or "base", _message(operation, first, body))
        raise ApiError(
            400, "parameter_invalid", _message(operation, first, body), first.field or None
        )
    problem = _prose_limits(operation, body)
    if problem is not None:
        raise problem
    message = body.get("message")
    if (
        version == "2.17"
        and isinstance(message, dict)
        and "timestamp" not in message
        and "timestamp_ms" not in message
    ):
        raise ApiError(422, "parameter_invalid", "timestamp_ms is required", "message.timestamp_ms")

"""Intercom-style error bodies, and pydantic validation errors translated to them."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

#: HTTP status -> error code used for injected faults and generic errors.
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "request_timeout",
    409: "conflict",
    422: "unprocessable_entity",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "request_timeout",
}


class ApiError(Exception):
    """An error answer: ``status`` and an ``error.list`` item (or a raw body for ``/fin/csat``)."""

    def __init__(
        self,
        status: int,
        code: str = "",
        message: str | None = None,
        field: str | None = None,
        raw_body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message or code)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.raw_body = raw_body

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON body: ``raw_body`` as is, else an ``error.list`` with ``request_id``."""
        if self.raw_body is not None:
            return self.raw_body
        item: dict[str, Any] = {"code": self.code}
        if self.message is not None:
            item["message"] = self.message
        if self.field is not None:
            item["field"] = self.field
        return {"type": "error.list", "request_id": request_id, "errors": [item]}


def status_error(status: int, message: str | None = None) -> ApiError:
    """A generic error for ``status`` (injected faults)."""
    code = STATUS_CODES.get(status, "server_error" if status >= 500 else "client_error")
    return ApiError(status, code, message if message is not None else f"Simulated {status}")


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def translate(op: str, exc: ValidationError) -> ApiError:
    """The first validation error as 400 ``parameter_invalid`` naming the field.

    Messages follow Intercom's documented ones where they exist ("conversation_id is required",
    "Conversation history cannot contain more than 10 items", "Cannot update more than 10
    attributes at once.", and /fin/ask's "External Conversation ID is required" / "User ID is
    required").
    """
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    field = _dotted(loc) if loc else None
    kind = error["type"]
    text = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "missing":
        message = f"{field} is required"
        if op == "ask" and field == "conversation_id":
            message = "External Conversation ID is required"
        elif op == "ask" and field in ("user", "user.id"):
            message = "User ID is required"
    elif kind == "extra_forbidden":
        message = f"{field} is not a valid parameter"
    elif loc[-1:] == ("history",) and kind == "too_long":
        message = "Conversation history cannot contain more than 10 items"
    elif loc[-1:] == ("attributes",) and "attributes" in text:
        message = "Cannot update more than 10 attributes at once."
    elif loc[-1:] == ("attachments",) and kind == "too_long":
        message = "Cannot send more than 10 attachments"
    else:
        message = f"{field} is invalid: {text}" if field else text
    return ApiError(400, "parameter_invalid", message, field)

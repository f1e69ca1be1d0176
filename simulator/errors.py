"""Intercom-style error bodies (``error.list``, or a raw body for ``/fin/csat``)."""

from __future__ import annotations

from typing import Any

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

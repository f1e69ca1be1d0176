"""The ``/fin/*`` endpoint handlers: a body already validated against the version's schema
(plain JSON dicts, see ``fin_relay.simulator.validation``) in, (status, body) out.

Choices where Intercom's docs are silent are marked "chosen" and listed in docs/simulator.md.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fin_relay.simulator import scenarios
from fin_relay.simulator.errors import ApiError
from fin_relay.simulator.state import Conversation, iso_ms, now_ms, timestamp_key

if TYPE_CHECKING:
    from fin_relay.simulator.app import SimulatorApp

Body = dict[str, Any]

SESSION_EXISTS = (
    "Fin session already exists for this conversation. Please use /reply to continue the "
    "conversation."
)
NOT_FOUND = "Conversation not found"
BUSY = "Fin is still working on the previous message for this conversation"

#: Procedures the simulator knows (``/fin/capabilities`` lists them).
PROCEDURES: dict[str, dict[str, str]] = {
    "12345": {
        "name": "Reset password",
        "description": "Walk the user through resetting their password.",
    },
}


@dataclass
class Result:
    """A handler's answer plus what the request log needs."""

    status: int
    body: dict[str, Any]
    deduplicated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _attribute_errors(user: Any, conv_attrs: Any) -> dict[str, Any]:
    """Scripted non-fatal attribute errors: keys starting ``invalid_`` or ``bad_`` (chosen)."""
    out: dict[str, Any] = {}
    bad = ("invalid_", "bad_")
    user_attrs = user.get("attributes") if isinstance(user, dict) else None
    if isinstance(user_attrs, dict):
        keys = [k for k in user_attrs if k.startswith(bad)]
        if keys:
            out["user"] = {"attributes": {k: f"User attribute '{k}' does not exist" for k in keys}}
    if isinstance(conv_attrs, dict):
        keys = [k for k in conv_attrs if k.startswith(bad)]
        if keys:
            out["conversation"] = {
                "attributes": {k: f"Conversation attribute '{k}' does not exist" for k in keys}
            }
    return out


def _metadata_attributes(req: Body) -> Any:
    metadata = req.get("conversation_metadata")
    return metadata.get("attributes") if isinstance(metadata, dict) else None


def _sse_url(sim: SimulatorApp, conversation_id: str, rewind: bool) -> str:
    url = (
        "https://primary-realtime.intercom-messenger.com/event-stream?channels=fin_agent_api:"
        f"sim:{conversation_id}&accessToken=sim.{uuid.uuid4().hex}"
    )
    return url + "&rewind=2m" if rewind else url


def _response(
    sim: SimulatorApp,
    conv: Conversation,
    rewind: bool,
    errors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "conversation_id": conv.id,
        "user_id": conv.user_id,
        "status": conv.status,
        "created_at_ms": iso_ms(now_ms()),
    }
    if sim.config.sse:
        body["sse_subscription_url"] = _sse_url(sim, conv.id, rewind)
    if errors:
        body["errors"] = errors
    return body


def message_timestamp(message: Any) -> str | None:
    """The de-duplication timestamp of a message: ``timestamp_ms`` wins over ``timestamp``.

    Whether a version requires one was settled by validation (2.14–2.16: the schema requires
    ``timestamp``; 2.17: 422 without either; Preview: neither required).
    """
    if not isinstance(message, dict):
        return None
    value = message.get("timestamp_ms") or message.get("timestamp")
    return value if isinstance(value, str) else None


def _new_conversation(
    sim: SimulatorApp, req: Body, version: str, kind: str, stamp: str | None
) -> tuple[Conversation | None, Result | None]:
    """Create the conversation, or answer a duplicate / an existing session."""
    key = timestamp_key(stamp)
    conversation_id: str = req["conversation_id"]
    conv = sim.store.get(conversation_id)
    if conv is not None:
        if conv.seen_recently(key):
            return None, Result(200, _response(sim, conv, True), deduplicated=True)
        raise ApiError(400, "parameter_invalid", SESSION_EXISTS, "conversation_id")
    conv = sim.store.create(conversation_id, req["user"]["id"], version, kind)
    conv.remember(key)
    return conv, None


def _begin(sim: SimulatorApp, req: Body, version: str, kind: str) -> Result:
    message: Body = req["message"]
    conv, dup = _new_conversation(sim, req, version, kind, message_timestamp(message))
    if dup is not None:
        return dup
    assert conv is not None
    sim.schedule_turn(conv, message["body"])
    errors = _attribute_errors(req["user"], _metadata_attributes(req))
    return Result(200, _response(sim, conv, True, errors))


def start(sim: SimulatorApp, req: Body, version: str, _path: dict[str, str]) -> Result:
    """``POST /fin/start``."""
    return _begin(sim, req, version, "conversation")


def ask(sim: SimulatorApp, req: Body, version: str, _path: dict[str, str]) -> Result:
    """``POST /fin/ask``: like start, but one answer and ``complete`` (no follow-ups)."""
    return _begin(sim, req, version, "ask")


def reply(sim: SimulatorApp, req: Body, version: str, _path: dict[str, str]) -> Result:
    """``POST /fin/reply``: 404 unknown conversation, 409 while Fin works (both chosen)."""
    message: Body = req["message"]
    stamp = message_timestamp(message)
    conv = sim.store.get(req["conversation_id"])
    if conv is None:
        raise ApiError(404, "not_found", NOT_FOUND, "conversation_id")
    key = timestamp_key(stamp)
    if conv.seen_recently(key):
        return Result(200, _response(sim, conv, False), deduplicated=True)
    if conv.busy:
        raise ApiError(409, "conflict", BUSY, "conversation_id")
    conv.remember(key)
    conv.user_id = req["user"]["id"]
    conv.version = version
    sim.schedule_turn(conv, message["body"])
    return Result(200, _response(sim, conv, False, _attribute_errors(req["user"], None)))


def procedure_run(sim: SimulatorApp, req: Body, version: str, path: dict[str, str]) -> Result:
    """``POST /fin/procedures/{procedure_id}/run``."""
    procedure_id = path["procedure_id"]
    if procedure_id not in PROCEDURES:
        raise ApiError(400, "parameter_invalid", "Procedure not found", "procedure_id")
    message = req.get("message")
    conv, dup = _new_conversation(sim, req, version, "procedure", message_timestamp(message))
    if dup is not None:
        dup.body["procedure_id"] = procedure_id
        return dup
    assert conv is not None
    sim.schedule_turn(conv, message["body"] if isinstance(message, dict) else "")
    body = _response(sim, conv, True, _attribute_errors(req["user"], _metadata_attributes(req)))
    body["procedure_id"] = procedure_id
    return Result(200, body)


def escalate(sim: SimulatorApp, req: Body, version: str, _path: dict[str, str]) -> Result:
    """``POST /fin/escalate``: ``escalated`` (API reason) + ``complete``; cancels a pending turn."""
    conversation_id = req.get("conversation_id")
    if conversation_id is None:
        return Result(
            200, {"intercom_conversation_id": str(secrets.randbelow(10**9)), "status": "escalated"}
        )
    conv = sim.store.get(conversation_id)
    if conv is None:
        raise ApiError(400, "parameter_invalid", NOT_FOUND, "conversation_id")
    conv.cancel_pending()
    conv.status = "complete"
    sim.dispatcher.enqueue(conv.id, scenarios.escalation_events(conv))
    body: dict[str, Any] = {"conversation_id": conv.id, "status": "escalated"}
    if sim.config.sse:
        body["sse_subscription_url"] = _sse_url(sim, conv.id, True)
    return Result(200, body)


def _csat_error(key: str, message: str) -> ApiError:
    return ApiError(422, "unprocessable_entity", message, raw_body={"errors": {key: message}})


def csat(sim: SimulatorApp, req: Body, version: str, _path: dict[str, str]) -> Result:
    """``POST /fin/csat`` with the documented idempotency and 422 bodies."""
    conv = sim.store.get(req["conversation_id"])
    if conv is None:
        raise _csat_error(
            "external_conversation_id",
            "Conversation not found for the given external_conversation_id",
        )
    if conv.csat_offered_at is None:
        raise _csat_error("base", "No rating survey found for this conversation")
    if time.monotonic() - conv.csat_offered_at > sim.config.csat_window_s:
        raise _csat_error("base", "The rating window for this conversation has closed")
    rating: str = req["rating"]
    remark: str | None = req.get("remark")
    same = rating == conv.rating and remark in (None, conv.remark)
    if conv.remark is not None and not same:
        raise _csat_error(
            "base",
            "This rating can no longer be changed because a remark has already been submitted",
        )
    conv.rating = rating
    if remark is not None and conv.remark is None:
        conv.remark = remark
    return Result(200, {"conversation_id": conv.id, "rating": rating, "status": "rated"})


def capabilities(sim: SimulatorApp, req: Body, version: str, _path: dict[str, str]) -> Result:
    """``POST /fin/capabilities``: the known procedures plus reply, ask and escalate."""
    items: list[dict[str, Any]] = [
        {
            "type": "procedure",
            "id": pid,
            "name": info["name"],
            "description": info["description"],
            "endpoint": f"/fin/procedures/{pid}/run",
            "method": "POST",
        }
        for pid, info in PROCEDURES.items()
    ]
    items += [
        {"type": "reply", "description": "Reply to an in-progress Fin conversation.", "endpoint": "/fin/reply", "method": "POST"},
        {"type": "ask", "description": "Ask Fin a single, self-contained question.", "endpoint": "/fin/ask", "method": "POST"},
        {"type": "escalate", "description": "Hand the conversation to a human.", "endpoint": "/fin/escalate", "method": "POST"},
    ]  # fmt: skip
    return Result(200, {"version": version, "capabilities": items})


Handler = Callable[["SimulatorApp", Body, str, dict[str, str]], Result]

HANDLERS: dict[str, Handler] = {
    "start": start,
    "ask": ask,
    "reply": reply,
    "procedure_run": procedure_run,
    "escalate": escalate,
    "csat": csat,
    "capabilities": capabilities,
}

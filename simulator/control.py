"""The control API under the reserved prefix ``/_sim/`` (no bearer token: bind to localhost).

| method | path | what |
|---|---|---|
| GET | ``/_sim/health`` | ``{"ok": true}`` |
| GET / DELETE | ``/_sim/requests`` | the request log / clear it |
| GET / POST / DELETE | ``/_sim/faults`` | per-endpoint faults (POST replaces; ``?merge=1`` merges) |
| GET / POST | ``/_sim/config`` | configuration (secrets masked) / update some fields |
| GET / DELETE | ``/_sim/webhooks`` | the delivery log (every attempt) / clear it |
| GET | ``/_sim/conversations/{id}`` | one conversation's state (404 if unknown) |
| POST | ``/_sim/conversations/{id}/events`` | send events now: ``{"kind": K}`` or ``{"events": [...]}`` |
| POST | ``/_sim/reset`` | clear logs, faults and conversations |
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fin_relay.simulator import scenarios
from fin_relay.simulator.config import apply_updates

if TYPE_CHECKING:
    from fin_relay.simulator.app import Receive, Scope, Send, SimulatorApp


async def handle(sim: SimulatorApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one control request."""
    from fin_relay.simulator.app import ClientDisconnected, new_request_id, read_body, send_json

    headers = [(b"x-request-id", new_request_id().encode())]
    method: str = scope["method"]
    path: str = scope["path"]
    try:
        raw = await read_body(receive)
    except ClientDisconnected:
        return
    try:
        data: Any = json.loads(raw) if raw else {}
    except ValueError:
        await send_json(send, 400, {"error": "body is not JSON"}, headers)
        return
    try:
        status, body = _dispatch(sim, method, path, scope.get("query_string", b""), data)
    except (ValueError, TypeError) as exc:
        status, body = 400, {"error": str(exc)}
    await send_json(send, status, body, headers)


def _dispatch(
    sim: SimulatorApp, method: str, path: str, query: bytes, data: Any
) -> tuple[int, Any]:
    if path == "/_sim/health":
        return 200, {"ok": True}
    if path == "/_sim/requests":
        if method == "DELETE":
            sim.requests.clear()
            return 200, {"cleared": True}
        return 200, {"requests": list(sim.requests)}
    if path == "/_sim/webhooks":
        if method == "DELETE":
            sim.dispatcher.clear_log()
            return 200, {"cleared": True}
        return 200, {"deliveries": list(sim.dispatcher.log), **sim.dispatcher.stats()}
    if path == "/_sim/faults":
        if method == "DELETE":
            sim.faults.clear()
        elif method == "POST":
            if not isinstance(data, dict):
                raise ValueError("faults body must be an object of endpoint -> spec")
            sim.faults.set(data, replace=b"merge=1" not in query)
        return 200, {"faults": sim.faults.to_dict()}
    if path == "/_sim/config":
        if method == "POST":
            if not isinstance(data, dict):
                raise ValueError("config body must be an object")
            sim.reconfigure(apply_updates(sim.config, data))
        return 200, {"config": sim.config.public()}
    if path == "/_sim/reset" and method == "POST":
        sim.requests.clear()
        sim.dispatcher.clear_log()
        sim.faults.clear()
        sim.store.clear()
        return 200, {"reset": True}
    if path.startswith("/_sim/conversations/") and path.endswith("/events"):
        if method != "POST":
            return 404, {"error": f"unknown control path {method} {path}"}
        conversation_id = path.removeprefix("/_sim/conversations/").removesuffix("/events")
        return _send_events(sim, conversation_id, data)
    if path.startswith("/_sim/conversations/"):
        conv = sim.store.get(path.removeprefix("/_sim/conversations/"))
        if conv is None:
            return 404, {"error": "unknown conversation"}
        return 200, {
            "conversation_id": conv.id,
            "user_id": conv.user_id,
            "version": conv.version,
            "kind": conv.kind,
            "status": conv.status,
            "busy": conv.busy,
            "rating": conv.rating,
            "remark": conv.remark,
            "csat_offered": conv.csat_offered_at is not None,
        }
    return 404, {"error": f"unknown control path {method} {path}"}


def _send_events(sim: SimulatorApp, conversation_id: str, data: Any) -> tuple[int, Any]:
    """Queue on-demand events for delivery like any other (signed, in order, with retries).

    ``{"kind": K}`` builds the events of ``scenarios.ON_DEMAND[K]`` for the conversation;
    ``{"events": [...]}`` sends the given objects exactly as they are.
    """
    conv = sim.store.get(conversation_id)
    if conv is None:
        return 404, {"error": "unknown conversation"}
    if not isinstance(data, dict) or ("kind" in data) == ("events" in data):
        raise ValueError('events body must be {"kind": K} or {"events": [...]}')
    if "kind" in data:
        if not isinstance(data["kind"], str):
            raise ValueError("kind must be a string")
        events = scenarios.on_demand_events(conv, data["kind"])
    else:
        events = data["events"]
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise ValueError("events must be a list of JSON objects")
    sim.dispatcher.enqueue(conv.id, events)
    return 200, {"conversation_id": conv.id, "version": conv.version, "events": events}

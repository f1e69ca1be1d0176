"""Turning envelopes into one readable line (``fin-relay watch``, ``fin-relay dead list``)."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from fin_relay.contract.envelope import Envelope

_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
SUMMARY_CHARS = 100


def strip_html(text: str) -> str:
    """Fin's HTML reply as plain text on one line."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()


def truncate(text: str, limit: int = SUMMARY_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_text(data: dict[str, Any]) -> str | None:
    """The error of a ``call.failed`` or dead-letter envelope's ``data`` as one line of text:
    ``error.message`` (else the ``error`` object as JSON), or ``error`` itself when it is text
    (an event's or an off-contract message's dead letter), prefixed with Fin's HTTP status
    when there is one; None when there is no error."""
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message:
            text = message
        elif error:
            text = json.dumps(error, separators=(",", ":"), ensure_ascii=False, default=str)
        else:
            return None
    elif error is None or error == "":
        return None
    else:
        text = str(error)
    text = _SPACE.sub(" ", text).strip()
    status = data.get("status")
    return f"HTTP {status}: {text}" if isinstance(status, int) else text


def _call_summary(data: dict[str, Any]) -> str:
    parts = [str(data.get("operation") or data.get("task") or "call"), f"job={data.get('job_id')}"]
    response = data.get("response")
    if isinstance(response, dict) and response.get("status"):
        parts.append(f"status={response['status']}")
    if data.get("reason"):
        parts.append(f"reason={data['reason']}")
    error = data.get("error")
    if isinstance(error, dict) and error.get("message"):
        parts.append(str(error["message"]))
    if data.get("attempts"):
        parts.append(f"attempts={data['attempts']}")
    return " ".join(parts)


def summary(envelope: Envelope) -> str:
    """A short human summary of an envelope's ``data``, by type."""
    data = envelope.data
    kind = envelope.type
    if kind == "fin_replied":
        message = data.get("message")
        body = message.get("body") if isinstance(message, dict) else None
        text = strip_html(body) if isinstance(body, str) else ""
        return f"[{data.get('status')}] {text}"
    if kind == "fin_reply_chunk":
        return f"#{data.get('chunk_index')} {strip_html(str(data.get('chunk_text', '')))}"
    if kind == "fin_status_updated":
        reason = f" ({data['reason']})" if data.get("reason") else ""
        return f"{data.get('status')}{reason}"
    if kind.startswith("call."):
        return _call_summary(data)
    if kind.endswith(".dead"):
        head = f"{data.get('task')} id={data.get('dead_id')} reason={data.get('reason')}"
        error = error_text(data)
        return f"{head} error: {error}" if error else head
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)


def line(envelope: Envelope, limit: int = SUMMARY_CHARS) -> str:
    """``time  type  conversation  summary`` on one line."""
    at = envelope.occurred_at[11:23] if len(envelope.occurred_at) >= 23 else envelope.occurred_at
    conversation = envelope.conversation_id or "-"
    return f"{at}  {envelope.type:<20} {conversation:<16} {truncate(summary(envelope), limit)}"

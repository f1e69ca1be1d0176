"""One structured line per webhook request, written without slowing the event loop down.

Fields: ``ts`` (ISO-8601 UTC with milliseconds and ``Z``, like every fin-relay log line:
``observability.iso_ms``), ``log`` (``access``), ``method``, ``path``, ``status``,
``event_name``, ``conversation_id``, ``dedup`` (``new``/``duplicate``/``ping``/``null``),
``error`` (the short code of a refusal) and ``duration_ms``.
Never bodies, signatures or secrets. JSON lines when the stream is not a TTY, a short human line
otherwise. Lines are buffered and written at most every ``flush_interval_s`` (or when
``max_buffered`` accumulate), so logging costs one ``write`` per batch, not one per request.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from fin_relay.observability import iso_ms

if TYPE_CHECKING:
    from fin_relay.webhook_ingest.metrics import RequestMetrics

_ENCODE: Any = json.encoder.encode_basestring_ascii  # C-accelerated


def _str(value: str | None) -> str:
    """A JSON string (ASCII, escaped: no control characters reach the log) or ``null``."""
    return "null" if value is None else str(_ENCODE(value))


_MAX_CACHED = 512


class _Encoded(dict[str | None, str]):
    """``_str`` memoised for low-cardinality fields (method, path, event name, dedup, error):
    most lines then encode only the conversation id. Bounded: cleared past ``_MAX_CACHED``."""

    def __missing__(self, value: str | None) -> str:
        if len(self) >= _MAX_CACHED:
            self.clear()
        encoded = self[value] = _str(value)
        return encoded


class AccessLog:
    """Buffered access log; call :meth:`flush` at shutdown."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        json_lines: bool | None = None,
        enabled: bool = True,
        flush_interval_s: float = 0.2,
        max_buffered: int = 256,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        if json_lines is None:
            isatty = getattr(self._stream, "isatty", None)
            json_lines = not (callable(isatty) and isatty())
        self._json = json_lines
        self._buffer: list[str] = []
        self._flush_interval_s = flush_interval_s
        self._max_buffered = max_buffered
        self._scheduled = False
        self._encoded = _Encoded()
        self.metrics: RequestMetrics | None = None

    def record(
        self,
        *,
        method: str,
        path: str,
        status: int,
        started_s: float,
        event_name: str | None = None,
        conversation_id: str | None = None,
        dedup: str | None = None,
        error: str | None = None,
    ) -> None:
        """Buffer one access line (``started_s`` from ``time.perf_counter()``)."""
        if self.metrics is not None:
            self.metrics.record(status, dedup)
        if not self.enabled:
            return
        duration_ms = round((time.perf_counter() - started_s) * 1000, 3)
        if self._json:
            enc = self._encoded
            line = (
                f'{{"ts":"{iso_ms(time.time())}","log":"access","method":{enc[method]},'
                f'"path":{enc[path]},"status":{int(status)},"event_name":{enc[event_name]},'
                f'"conversation_id":{_str(conversation_id)},"dedup":{enc[dedup]},'
                f'"error":{enc[error]},"duration_ms":{duration_ms}}}'
            )
        else:
            extra = f" error={error}" if error else ""
            line = (
                f"{iso_ms(time.time())} {method} {_str(path)} {status} event={_str(event_name)} "
                f"conversation={_str(conversation_id)} dedup={dedup or '-'}{extra} "
                f"{duration_ms}ms"
            )
        self._buffer.append(line)
        if len(self._buffer) >= self._max_buffered:
            self.flush()
        elif not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_later(self._flush_interval_s, self.flush)

    def flush(self) -> None:
        """Write every buffered line now."""
        self._scheduled = False
        if not self._buffer:
            return
        lines, self._buffer = self._buffer, []
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # closed or broken stream: drop the lines, keep serving
            pass

"""Coalesce the Redis round trips of concurrent worker threads into shared pipelines.

Each job makes two round trips of its own (the gate script before the call, the outcome
pipeline after it). With 64 threads many of them are ready at the same moment, so
:class:`Coalescer` runs the command stacks of every thread waiting at that moment as **one**
pipeline (flat combining): the first thread to arrive while no round trip is in flight
becomes the leader, sends everything queued, hands each thread its own slice of the replies,
and serves what queued up meanwhile (at most ``max_rounds`` times, then hands over).

Semantics per stack are those of a pipeline: its commands run in order and contiguously (Redis
runs one connection's commands in order); a stack given as a transaction
(``execute(..., transaction=True)``, or a ``pipeline(transaction=True)``) is sent wrapped in
``MULTI``/``EXEC``, so all of it is applied and persisted or none of it (a job's outcome and
its published envelope commit together). A command error (e.g. NOSCRIPT) concerns only its own
stack; a connection error fails every stack of that round trip, which the task handles as
"Redis is down" (the job is kept).
"""

from __future__ import annotations

import threading
from typing import Any, cast

import redis
from redis.exceptions import NoScriptError

from fin_relay.contract import redisproto

Command = tuple[tuple[Any, ...], dict[str, Any]]


#: Options marking a command whose reply is read raw (MULTI, a queued command, EXEC).
_RAW: dict[str, Any] = {}


class _Item:
    __slots__ = ("commands", "done", "error", "lead", "results", "transaction")

    def __init__(self, commands: list[Command], transaction: bool = False) -> None:
        self.commands = commands
        self.transaction = transaction
        self.done = threading.Event()
        self.lead = False
        self.results: list[Any] | None = None
        self.error: BaseException | None = None

    def wire(self) -> list[Command]:
        """The commands as sent: wrapped in MULTI/EXEC for a transaction."""
        if not self.transaction:
            return self.commands
        return [
            (("MULTI",), _RAW),
            *[(args, _RAW) for args, _ in self.commands],
            (("EXEC",), _RAW),
        ]


class Coalescer:
    """``execute(commands)``: run one thread's command stack, sharing round trips."""

    def __init__(self, client: redis.Redis, max_rounds: int = 4, wait_s: float = 60.0) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._pending: list[_Item] = []
        self._busy = False
        self._max_rounds = max_rounds
        self._wait_s = wait_s
        # Only the leader sends (``_busy``), so one connection is enough; holding it skips the
        # pool checkout, retry wrapper and release that ``Pipeline.execute`` pays per round trip.
        self._conn: Any = None

    def execute_pipeline(self, pipe: Any) -> list[Any]:
        """Run a pipeline's queued commands (``pipe`` itself is not executed), as a
        ``MULTI``/``EXEC`` transaction when the pipeline is one."""
        return self.execute(
            list(pipe.command_stack), transaction=bool(getattr(pipe, "transaction", False))
        )

    def execute(self, commands: list[Command], transaction: bool = False) -> list[Any]:
        item = _Item(commands, transaction)
        with self._lock:
            self._pending.append(item)
            lead = not self._busy
            self._busy = True
        if not lead:
            if not item.done.wait(self._wait_s):
                raise redis.TimeoutError("coalesced Redis round trip did not complete")
            lead = item.lead and item.results is None and item.error is None
        if lead:
            self._serve()
        if item.error is not None:
            raise item.error
        assert item.results is not None
        return item.results

    def _serve(self) -> None:
        for _ in range(self._max_rounds):
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._busy = False
                    return
            self._run(batch)
        # Hand over to a waiting thread: no thread serves the others for long.
        with self._lock:
            if not self._pending:
                self._busy = False
                return
            successor = self._pending[0]
            successor.lead = True  # stays queued: it is sent in its own thread's first round
        successor.done.set()

    def _round_trip(self, commands: list[Command]) -> list[Any]:
        """Send ``commands`` in one write on the held connection; replies (errors as values).

        Before sending, the socket is checked as the pool checks one it hands out
        (:func:`~fin_relay.contract.redisproto.ensure_ready`): one Redis closed (restart, idle
        timeout, CLIENT KILL) is replaced by a fresh connection, so it costs a reconnect, not a
        failed round trip for every job in it. Nothing is re-sent after a failure (commands may
        have run)."""
        if self._conn is None:
            self._conn = self._client.connection_pool.get_connection()
        conn, client = self._conn, cast(Any, self._client)
        redisproto.ensure_ready(conn)
        try:
            conn.send_packed_command(conn.pack_commands([args for args, _ in commands]))
            replies: list[Any] = []
            for args, options in commands:
                try:
                    if options is _RAW:
                        replies.append(client.parse_response(conn, "_"))
                    else:
                        replies.append(client.parse_response(conn, args[0], **options))
                except redis.ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            # The stream may be out of step (a reply half read): never reuse this socket.
            conn.disconnect()
            raise

    def _run(self, batch: list[_Item]) -> None:
        try:
            replies = self._round_trip([c for item in batch for c in item.wire()])
        except BaseException as exc:  # connection errors: every stack of this round trip
            for item in batch:
                item.error = exc
                item.done.set()
            return
        at = 0
        for item in batch:
            size = len(item.commands) + (2 if item.transaction else 0)
            mine = replies[at : at + size]
            at += size
            self._settle(item, mine)

    def _unwrap(self, item: _Item, replies: list[Any]) -> list[Any]:
        """The replies of a transaction's commands, from MULTI, QUEUED ..., EXEC (as
        redis-py's transaction pipeline reads them: callbacks applied after EXEC)."""
        executed = replies[-1]
        if isinstance(executed, Exception) or not isinstance(executed, list):
            queued = next((r for r in replies[:-1] if isinstance(r, Exception)), None)
            raise queued or (
                executed
                if isinstance(executed, Exception)
                else redis.ResponseError("transaction aborted")
            )
        callbacks = cast(Any, self._client).response_callbacks
        out: list[Any] = []
        for (args, options), raw in zip(item.commands, executed, strict=True):
            callback = callbacks.get(args[0]) if not isinstance(raw, Exception) else None
            extra = {k: v for k, v in options.items() if k != "keys"}
            out.append(callback(raw, **extra) if callback is not None else raw)
        return out

    def _settle(self, item: _Item, replies: list[Any]) -> None:
        try:
            if item.transaction:
                replies = self._unwrap(item, replies)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                # Redis lost the scripts: reload, run again only the commands that failed
                # (every other one ran: running the stack again would publish twice).
                redisproto.load_all(self._client)
                again = self._round_trip([item.commands[i] for i in missing])
                replies = list(replies)
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
            error = next((r for r in replies if isinstance(r, Exception)), None)
            if error is not None:
                raise error
            item.results = replies
        except BaseException as exc:
            item.error = exc
        item.done.set()

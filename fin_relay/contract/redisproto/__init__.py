"""The Redis protocol layer: every server-side Lua script of fin-relay, and one way to run them.

**Scripts.** The ``*.lua`` files of this folder (package data), one per script, each documenting
its KEYS, ARGV and reply in its header. Key names come from :mod:`fin_relay.contract.names` and
are passed as KEYS (a script may derive a key from one it was passed, or from a prefix, as
``rate_limit.lua`` does with the window from Redis's clock). A *library* (``celery_wire.lua``,
``sequence_advance.lua``) defines local functions and is prepended to the scripts that use it
(:func:`script`). The module-level :class:`Script` constants below are the catalogue.

**Running.** A :class:`Script` is run the same way by every component, always as ``EVALSHA``
(its source is sent only when Redis lost it: restart, ``SCRIPT FLUSH``):

* ``SCRIPT(client, keys, args)``: sync client; on ``NOSCRIPT``, ``EVAL`` (which caches it again).
* ``await SCRIPT.acall(client, keys, args)``: the same with an asyncio client.
* ``await SCRIPT.acall_held(conn, keys, args)``: the same on an asyncio connection the caller
  holds (no pool checkout per call; check it first with :func:`aensure_ready`).
* ``SCRIPT.queue(pipe, keys, args)``: ``EVALSHA`` queued on a pipeline without the
  ``SCRIPT EXISTS`` round trip redis-py's own ``Script`` objects add to every ``execute()``;
  the pipeline is run by :func:`execute` (or the worker's ``Coalescer``), which after a
  ``NOSCRIPT`` loads the scripts and runs again only the commands that failed.
* ``SCRIPT.command(keys, args)``: the ``EVALSHA`` command itself, for a raw send (the
  ``Coalescer``'s command stacks; the broker take, pipelined on kombu's event loop).

**Replies.** fin-relay's clients do not agree on ``decode_responses`` (the worker's decodes, the
producer's does not, a user's client may do either), so code reading a reply assumes neither and
turns each value into ``str`` with :func:`text`, the one helper for it.

**Held connections.** :func:`ensure_ready` / :func:`aensure_ready` check a connection held between
uses the way the pool checks one at checkout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "BROKER_KEEP_ALIVE",
    "BROKER_RELEASE",
    "BROKER_TAKE",
    "CONVERSATION_STATE",
    "INGEST_ENQUEUE",
    "INGEST_RELEASE_CLAIM",
    "PRODUCER_ABANDON",
    "PRODUCER_ENQUEUE",
    "RATE_LIMIT",
    "SEQUENCING",
    "XADD_RECORDING_ID",
    "Script",
    "aensure_ready",
    "ensure_ready",
    "execute",
    "load_all",
    "script",
    "source",
    "text",
]

#: Every script built so far, by SHA1: what :func:`load_all` loads after a ``NOSCRIPT``.
_KNOWN: dict[str, str] = {}


class Script:
    """One Lua script, run by its SHA1 (see the module docstring for the ways to call it)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, source: str, name: str = "") -> None:
        self.source = source
        self.name = name
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        _KNOWN[self.sha] = source

    def __repr__(self) -> str:
        return f"Script({self.name or self.sha[:12]!r})"

    def command(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> tuple[Any, ...]:
        """The ``EVALSHA`` command running this script with ``keys`` and ``args``."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def _eval(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        return ("EVAL", self.source, len(keys), *keys, *args)

    def __call__(
        self, client: redis.Redis, keys: Sequence[Any] = (), args: Sequence[Any] = ()
    ) -> Any:
        """Run on a sync client (one round trip; two when Redis lost the script)."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)

    async def acall(
        self, client: redis.asyncio.Redis, keys: Sequence[Any] = (), args: Sequence[Any] = ()
    ) -> Any:
        """Run on an asyncio client."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)

    async def acall_held(
        self, conn: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()
    ) -> Any:
        """Run on an asyncio connection the caller holds (``redis.asyncio.Connection``).

        A failure leaves the connection's stream out of step: the caller drops it."""
        await conn.send_command(*self.command(keys, args))
        try:
            return await conn.read_response()
        except NoScriptError:
            await conn.send_command(*self._eval(keys, args))
            return await conn.read_response()

    def queue(self, pipe: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> None:
        """Queue ``EVALSHA`` on a pipeline (sync or asyncio) run by :func:`execute` or the
        worker's ``Coalescer``, which recover from a ``NOSCRIPT``."""
        pipe.execute_command(*self.command(keys, args))

    def queue_source(self, pipe: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> None:
        """Queue ``EVAL`` (the source) on a pipeline: never ``NOSCRIPT``. For a command of a
        ``MULTI``/``EXEC`` that must commit with the rest (a re-run after a ``NOSCRIPT`` would
        come after ``EXEC``), when the script is rarely run (its text is sent every time)."""
        pipe.execute_command(*self._eval(keys, args))


def source(name: str) -> str:
    """The text of ``name``, a file of this folder."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def script(name: str, *, libraries: Sequence[str] = ()) -> Script:
    """The script of file ``name``, the ``libraries`` (files of this folder) prepended."""
    return Script("".join([*map(source, libraries), source(name)]), name)


def load_all(client: redis.Redis) -> None:
    """Load every script (at start-up, and after a ``NOSCRIPT``), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for body in list(_KNOWN.values()):
        pipe.script_load(body)
    pipe.execute()


def execute(client: redis.Redis, pipe: Any) -> list[Any]:
    """``pipe.execute()``; after a ``NOSCRIPT``, loads the scripts and runs again only the
    commands that failed with it, in their order, once the scripts are loaded.

    Every other command of the pipeline has run (inside ``MULTI``/``EXEC`` too: ``NOSCRIPT`` is
    an error of that one command at ``EXEC``, not an abort), so running the whole pipeline again
    would publish twice. Any other error is raised as ``execute()`` would raise it."""
    stack = list(pipe.command_stack)
    results = list(pipe.execute(raise_on_error=False))
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        load_all(client)
        again = client.pipeline(transaction=False)
        for i in missing:
            args, options = stack[i]
            again.pipeline_execute_command(*args, **options)
        for i, result in zip(missing, again.execute(raise_on_error=False), strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def text(value: Any) -> str:
    """A reply value as ``str``, whatever the client's ``decode_responses``."""
    return value.decode() if isinstance(value, bytes) else str(value)


# --- held connections --------------------------------------------------------------------------

#: What the pool's checkout answers with a reconnect rather than a failure.
_NOT_READY = (RedisConnectionError, RedisTimeoutError, OSError)


def _refuse(readable: bool) -> None:
    """An idle connection has nothing to read: a readable one holds the EOF of a socket Redis
    closed (restart, idle timeout, ``CLIENT KILL``) or stray data."""
    if readable:
        raise RedisConnectionError("held connection not ready")


def ensure_ready(conn: Any) -> None:
    """Check a connection held between uses (sync) as the pool checks one at checkout: one
    Redis closed is replaced by a fresh connection (a reconnect, not a failed call).

    This is what redis-py's ``ConnectionPool.get_connection`` does (``ensure_connection``;
    re-check on redis-py upgrades); redis-py 8.1's asyncio pool skips it when maintenance
    notifications are "auto", so :func:`aensure_ready` makes it there too."""
    try:
        conn.connect()
        _refuse(conn.can_read())
    except _NOT_READY:
        conn.disconnect()
        conn.connect()


async def aensure_ready(conn: Any) -> None:
    """:func:`ensure_ready` for an asyncio connection."""
    try:
        await conn.connect()
        _refuse(await conn.can_read())
    except _NOT_READY:
        await conn.disconnect()
        await conn.connect()


# --- the catalogue -------------------------------------------------------------------------------

#: fin_relay.worker: sequencing (and the job's lease), conversation state, the rate limiter;
#: worker/gate.py composes sequencing and rate_limit with ``gate.lua``.
SEQUENCING = script("sequencing.lua", libraries=["sequence_advance.lua"])
CONVERSATION_STATE = script("conversation_state.lua")
RATE_LIMIT = script("rate_limit.lua")
#: fin_relay.worker.transport (kombu's Redis transport, fixed): the take, the lease.
BROKER_TAKE = script("broker_take.lua", libraries=["celery_wire.lua"])
BROKER_KEEP_ALIVE = script("broker_keep_alive.lua")
BROKER_RELEASE = script("broker_release.lua")
#: fin_relay.producer: the enqueue, and its undoing when another broker refused the publish.
PRODUCER_ENQUEUE = script("producer_enqueue.lua")
PRODUCER_ABANDON = script("producer_abandon.lua", libraries=["sequence_advance.lua"])
#: fin_relay.webhook_ingest: de-dup + enqueue of a batch; the de-dup claim's release (kombu).
INGEST_ENQUEUE = script("ingest_enqueue.lua")
INGEST_RELEASE_CLAIM = script("ingest_release_claim.lua")
#: fin_relay.contract.publish: XADD recording the new entry's id; a publication made once.
XADD_RECORDING_ID = script("xadd_recording_id.lua")
PUBLISH_ONCE = script("publish_once.lua")

"""Running the worker's Lua scripts inside pipelines without an extra round trip.

redis-py's ``Script`` objects, when queued on a pipeline, make ``execute()`` send a
``SCRIPT EXISTS`` first — one more round trip per job. Here scripts are queued as plain
``EVALSHA`` and loaded once; if Redis lost them (restart, ``SCRIPT FLUSH``) the pipeline is
reloaded and run again. A re-run may publish an envelope a second time with the same id, which
consumers de-duplicate by id anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

_known: dict[str, str] = {}


def register(client: redis.Redis, source: str) -> Script:
    """``client.register_script`` that also remembers the source for reloading."""
    script = client.register_script(source)
    _known[script.sha] = source
    return script


def queue(pipe: Any, script: Script, keys: Iterable[Any], args: Iterable[Any]) -> None:
    """Queue ``EVALSHA`` of ``script`` on ``pipe`` (no SCRIPT EXISTS round trip)."""
    key_list = list(keys)
    pipe.execute_command("EVALSHA", script.sha, len(key_list), *key_list, *args)


def load_all(client: redis.Redis) -> None:
    """Load every registered script (at start-up, and after a NOSCRIPT)."""
    for source in list(_known.values()):
        client.script_load(source)


def execute(client: redis.Redis, pipe: Any) -> list[Any]:
    """``pipe.execute()``, reloading the scripts and re-running once after a NOSCRIPT error."""
    stack = list(pipe.command_stack)
    transaction = bool(getattr(pipe, "transaction", False))
    try:
        return list(pipe.execute())
    except NoScriptError:
        load_all(client)
        again = client.pipeline(transaction=transaction)
        for args, options in stack:
            again.pipeline_execute_command(*args, **options)
        return list(again.execute())

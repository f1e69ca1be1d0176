"""Running the worker's Lua scripts inside pipelines without an extra round trip.

redis-py's ``Script`` objects, when queued on a pipeline, make ``execute()`` send a
``SCRIPT EXISTS`` first — one more round trip per job. Here scripts are queued as plain
``EVALSHA`` and loaded once. If Redis lost them (restart, ``SCRIPT FLUSH``), every other
command of the pipeline has run (inside ``MULTI``/``EXEC`` too: ``NOSCRIPT`` is an error of that
one command at ``EXEC``, not an abort), so only the ``EVALSHA`` commands that failed are run
again, in their order, once the scripts are loaded: nothing is published twice.
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
    """``pipe.execute()``; after a ``NOSCRIPT``, loads the scripts and runs again only the
    commands that failed with it (the rest ran and must not run twice). Any other error is
    raised as ``execute()`` would raise it."""
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

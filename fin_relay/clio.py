"""Console input/output shared by the ``fin-relay`` commands: exit codes, closed pipes, questions.

Exit codes of the operator commands (``dead``, ``conversation``, ``watch``):

* :data:`EXIT_OK` (0) done;
* :data:`EXIT_PROBLEM` (1) not found, refused, declined, or a problem found;
* :data:`EXIT_USAGE` (2) usage or configuration error (``fin_relay.cli`` maps a
  ``ConfigurationError`` to 2 as well);
* :data:`EXIT_UNAVAILABLE` (3) Redis or the broker did not answer (as ``fin-relay enqueue``);
* :data:`EXIT_BROKEN_PIPE` (141, 128 + SIGPIPE, what a tool killed by SIGPIPE reports) the
  reader of standard output went away (``fin-relay dead list --json | head -1``): the command
  ends quietly, without a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_BROKEN_PIPE = 141

_Run = TypeVar("_Run", bound=Callable[..., int])


def silence_stdout() -> None:
    """Point standard output at ``/dev/null``: once its reader is gone, the interpreter's final
    flush must not raise (and print) a second ``BrokenPipeError``."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


def pipe_safe(run: _Run) -> _Run:
    """Decorate a command's ``run(args) -> int``: a closed standard output (``| head``) ends
    the command quietly with :data:`EXIT_BROKEN_PIPE` instead of a ``BrokenPipeError``
    traceback. Standard output is flushed before returning, so a late failure is caught too."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            code = run(*args, **kwargs)
            sys.stdout.flush()
        except BrokenPipeError:
            silence_stdout()
            return EXIT_BROKEN_PIPE
        return code

    return wrapper  # type: ignore[return-value]


def confirm(
    question: str, *, stdin: TextIO | None = None, stderr: TextIO | None = None
) -> bool | None:
    """Ask ``question [y/N]`` on the terminal: True for yes, False for anything else (or end of
    input); None when standard input is not a terminal (nobody to ask: the caller refuses)."""
    source = stdin if stdin is not None else sys.stdin
    out = stderr if stderr is not None else sys.stderr
    isatty = getattr(source, "isatty", None)
    if not (callable(isatty) and isatty()):
        return None
    out.write(f"{question} [y/N] ")
    out.flush()
    answer = source.readline()
    if not answer.endswith("\n"):
        out.write("\n")
    return answer.strip().lower() in ("y", "yes")


__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "confirm",
    "pipe_safe",
    "silence_stdout",
]

"""A plain Celery client that sends jobs as fast as it can (the worker benchmark's live mode).

Only Celery is imported, as in a service that knows nothing of fin-relay: a
``Celery(broker=...)`` app and ``send_task(name, kwargs=..., queue=...)``, one call per job, in
one thread. ``--kind fin`` sends the documented ``fin.start`` job (``docs/producer.md``, "The
wire contract") to ``fin.calls``; ``--kind bare`` sends the bare benchmark task
``bench.bare_call`` (``fin_relay.bench.worker_bench``) to Celery's default queue. Prints one
JSON line: the wall-clock time just before the first send and just after the last one.

    python bench/celery_sender.py --broker redis://127.0.0.1:PORT/0 --kind fin --jobs 3000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

from celery import Celery

#: (task name, queue) per kind: fin-relay's fixed task and queue; the bare task's own.
TASKS = {"fin": ("fin.start", "fin.calls"), "bare": ("bench.bare_call", "celery")}


def job_kwargs(kind: str, i: int, tag: str) -> dict[str, Any]:
    """The keyword arguments of job ``i``: a ``fin.start`` job on a new conversation each, or
    the bare task's job number."""
    if kind == "bare":
        return {"i": i}
    return {
        "conversation_id": f"live-{tag}-{i}",
        "user": {"id": "u"},
        "message": {"author": "user", "body": "hi"},
    }


def send(broker: str, kind: str, jobs: int) -> dict[str, float]:
    """Send ``jobs`` jobs of ``kind``; the first send's start and the last send's end."""
    task, queue = TASKS[kind]
    app = Celery("sender", broker=broker, set_as_current=False)
    tag = uuid.uuid4().hex[:8]
    try:
        t0 = time.time()
        for i in range(jobs):
            app.send_task(task, kwargs=job_kwargs(kind, i, tag), queue=queue)
        t1 = time.time()
    finally:
        app.close()
    return {"first_send": t0, "last_send": t1, "jobs": float(jobs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--kind", choices=sorted(TASKS), required=True)
    parser.add_argument("--jobs", type=int, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(send(args.broker, args.kind, args.jobs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

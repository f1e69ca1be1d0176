"""fin-relay's Celery worker: calls Fin with fleet-wide rate limiting, one retry layer,
per-conversation order and idempotent retries (docs/worker.md).

The Celery app is ``fin_relay.worker.app:app`` (``celery -A fin_relay.worker.app worker``).
"""

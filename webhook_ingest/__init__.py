"""Intercom Fin webhook ingest: verify, de-duplicate, enqueue ``fin.event``, answer fast.

Entry points: :func:`fin_relay.webhook_ingest.app.create_app` (ASGI app factory),
``fin-relay ingest`` (:mod:`fin_relay.webhook_ingest.cli`), and the pure helpers in
:mod:`fin_relay.webhook_ingest.verify` and :mod:`fin_relay.webhook_ingest.events`.
See ``docs/ingest.md``.
"""

"""fin-relay: a reliable relay between your backend and Intercom's Fin Agent API.

Import packages: ``fin_relay.contract`` (shared models, settings, Redis names, envelope,
errors), ``fin_relay.producer`` (enqueue API), ``fin_relay.worker`` (Celery app:
``fin_relay.worker.app``), ``fin_relay.webhook_ingest`` (ASGI app), ``fin_relay.simulator``.
"""

__version__ = "0.1.0"

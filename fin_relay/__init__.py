"""fin-relay: a reliable relay between your backend and Intercom's Fin Agent API.

Import packages: ``fin_relay.contract`` (shared models, settings, Redis names, envelope,
errors), ``fin_relay.producer`` (enqueue API), ``fin_relay.worker`` (Celery app:
``fin_relay.worker.app``), ``fin_relay.webhook_ingest`` (ASGI app), ``fin_relay.simulator``.
"""

import pkgutil

# The components live in top-level folders (worker/, producer/, ...) that setuptools maps into
# this package (pyproject.toml: package-dir). A checkout's fin_relay/ folder ahead of the
# installed package on sys.path (the current directory, PYTHONPATH) would hide them: extend
# __path__ with every fin_relay folder on sys.path so they are still found.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"

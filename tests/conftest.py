"""Test rig: a real Redis per session (flushed per test), a scrubbed environment.

Fixture plugins per area live in ``tests/fixtures/`` so each area owns its own file.
"""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.broker",
    "tests.fixtures.simulator",
    "tests.fixtures.worker",
    "tests.fixtures.ingest",
]

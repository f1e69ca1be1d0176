"""Fixtures for the producer tests (real Redis only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fin_relay.producer import Producer
from tests.producer.helpers import settings_for


@pytest.fixture
def producer(redis_url: str) -> Iterator[Producer]:
    p = Producer(settings_for(redis_url))
    yield p
    p.close()

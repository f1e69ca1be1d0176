"""Shared helpers for the simulator tests: the spec's literal JSON examples and a client."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.simulator import sim_headers

_EXAMPLES = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "fin_examples" / "spec_examples.json").read_text()
)


def example(name: str, **overrides: Any) -> dict[str, Any]:
    """A deep copy of a spec example, with top-level keys overridden."""
    body = copy.deepcopy(_EXAMPLES[name])
    body.update(overrides)
    return body


def with_message(request: dict[str, Any], /, **fields: Any) -> dict[str, Any]:
    """``request`` with fields of its ``message`` replaced."""
    out = copy.deepcopy(request)
    out["message"].update(fields)
    return out


def client(sim: Any, version: str | None = None) -> httpx.Client:
    """An authenticated client of ``sim``."""
    return httpx.Client(base_url=sim.base_url, headers=sim_headers(sim, version), timeout=10.0)

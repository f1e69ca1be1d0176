"""Every dependency direction the README states, checked in a fresh interpreter each.

README ("How it works", the layout): ``fin_relay.contract`` imports none of the components;
the producer and the ingest never import the worker (a service that only enqueues pulls in no
Fin HTTP client); more generally, no component imports another.
Each case imports every module of one package (``__main__`` aside: importing it runs it), one
after another, and names the first module that pulled in something it must not. Each also
checks that nothing was imported by its top-level folder name (``producer``, ``worker``, ...):
the code is always imported as ``fin_relay.<component>``, so it never shadows a module of the
same name in a user's project (the run's working directory is the repository root, where such
a slip would otherwise go unnoticed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = ("contract", "producer", "worker", "webhook_ingest", "simulator", "bench")
#: the top-level folders, importable by that name from the repository root only by mistake
FOLDERS = ("producer", "worker", "webhook_ingest", "simulator", "bench")

PROBE = r"""
import importlib, json, pkgutil, sys

package, forbidden = sys.argv[1], tuple(sys.argv[2:])
found, modules = {}, []

def bad():
    return {m for m in sys.modules if m in forbidden or m.startswith(tuple(f + "." for f in forbidden))}

def load(name):
    modules.append(name)
    before = bad()
    module = importlib.import_module(name)
    if bad() - before:
        found[name] = sorted(bad() - before)
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):  # finds without importing
        if info.name != "__main__":
            load(f"{name}.{info.name}")

load(package)
print(json.dumps({"modules": modules, "found": found}))
"""


@dataclass(frozen=True)
class Boundary:
    statement: str
    package: str
    forbidden: tuple[str, ...]


def _others(component: str) -> tuple[str, ...]:
    return tuple(f"fin_relay.{c}" for c in COMPONENTS if c not in {component, "contract"})


BOUNDARIES = [
    Boundary(
        "fin_relay.contract imports none of the components",
        "fin_relay.contract",
        tuple(f"fin_relay.{c}" for c in COMPONENTS if c != "contract"),
    ),
    Boundary(
        "the producer never imports the worker (nor another component, nor an HTTP client)",
        "fin_relay.producer",
        (*_others("producer"), "httpx"),
    ),
    Boundary(
        "the ingest never imports the worker (nor another component)",
        "fin_relay.webhook_ingest",
        _others("webhook_ingest"),
    ),
    Boundary("the worker imports no other component", "fin_relay.worker", _others("worker")),
    Boundary(
        "the simulator imports no other component", "fin_relay.simulator", _others("simulator")
    ),
]


def probe(package: str, forbidden: tuple[str, ...]) -> dict[str, object]:
    """Import every module of ``package`` in a fresh interpreter: what pulled in ``forbidden``."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, package, *forbidden, *FOLDERS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("boundary", BOUNDARIES, ids=lambda b: b.package.split(".")[-1])
def test_every_stated_import_direction_holds(boundary: Boundary) -> None:
    result = probe(boundary.package, boundary.forbidden)
    modules = result["modules"]
    assert isinstance(modules, list) and len(modules) > 3, modules  # the walk found the package
    assert result["found"] == {}, (
        f"{boundary.statement}: broken by (importing module -> what it pulled in) {result['found']}"
    )


def test_the_probe_sees_a_forbidden_import() -> None:
    """The check itself: it names the module that imports a component it must not (the
    benchmarks combine them all) and a folder imported by its top-level name."""
    found = probe("fin_relay.bench.producer_bench", ("fin_relay.producer",))["found"]
    assert isinstance(found, dict), found
    assert list(found) == ["fin_relay.bench.producer_bench"], found
    assert "fin_relay.producer.enqueue" in found["fin_relay.bench.producer_bench"]
    found = probe("producer.handle", ())["found"]
    assert found == {"producer.handle": ["producer", "producer.handle"]}, found


def test_the_readme_states_every_tested_direction() -> None:
    readme = (REPO / "README.md").read_text()
    assert "`fin_relay.contract` imports none of the others" in readme
    assert "the ingest never import the worker" in " ".join(readme.split())
    assert "no component imports another" in " ".join(readme.split())

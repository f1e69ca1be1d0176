"""fin-relay's Redis broker transport (``fin_relay.worker.transport``) overrides private kombu
methods verified with kombu 5.7, and calls kombu's ``_flush_brpop_reauth``, which first shipped
in kombu 5.7.0. The dependency range admits only the verified kombu, and a worker on a Redis
broker refuses to start (exit 2, one line) on any other kombu; RabbitMQ workers and producers
are not held to it.

The refusal is tested with a real older kombu (and the celery that goes with it) from the
package index, in a virtual environment made for the test: its own kombu and celery first, every
other package from this environment after them.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from fin_relay.worker import startup, transport

REPO = Path(__file__).resolve().parents[2]
OLD_KOMBU = "5.6.2"
OLD_CELERY = "5.6.3"  # the newest celery that accepts kombu 5.6 (celery 5.7 needs kombu >= 5.7)
REDIS_ENV = {"REDIS_URL": "redis://127.0.0.1:1/0", "FIN_API_TOKEN": "t"}
REFUSAL = (
    f"fin-relay worker: refusing to start: kombu {OLD_KOMBU} is installed, but fin-relay's "
    "Redis broker transport is verified with kombu >=5.7,<5.8 only: install it "
    "(pip install 'kombu>=5.7,<5.8') or use a RabbitMQ broker (FIN_BROKER_URL=amqp://...)"
)


def _requirement(name: str) -> Requirement:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == name]
    assert len(found) == 1, found
    return found[0]


def _pinned(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_the_dependency_range_is_the_verified_range() -> None:
    kombu = _requirement("kombu")
    assert kombu.specifier == SpecifierSet(startup.kombu_range()) == SpecifierSet(">=5.7,<5.8")
    assert _pinned("kombu") in kombu.specifier  # CI runs a verified kombu
    assert _pinned("celery") in _requirement("celery").specifier
    assert transport.kombu_verified()
    assert OLD_KOMBU not in kombu.specifier


@pytest.fixture(scope="module")
def old_kombu_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with kombu 5.6 and celery 5.6 installed from the package index;
    every other package comes from this environment (a ``.pth`` file adds its site directories
    after the venv's own)."""
    venv = tmp_path_factory.mktemp("oldkombu") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            f"kombu=={OLD_KOMBU}",
            f"celery=={OLD_CELERY}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    site_dir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    Path(site_dir, "_this_environment.pth").write_text(
        "".join(f"import site; site.addsitedir({path!r})\n" for path in ours)
    )
    return python


def _run(python: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
def test_the_old_environment_really_has_the_old_kombu(old_kombu_python: Path) -> None:
    code = (
        "import celery, kombu, kombu.transport.redis as r, fin_relay.worker.transport as t; "
        "print(kombu.__version__, celery.__version__, hasattr(r.Channel, '_flush_brpop_reauth'),"
        " t.kombu_version(), t.kombu_verified())"
    )
    proc = _run(old_kombu_python, "-c", code, env={})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [OLD_KOMBU, OLD_CELERY, "False", OLD_KOMBU, "False"]


@pytest.mark.integration
def test_fin_relay_worker_refuses_an_unverified_kombu_on_the_redis_broker(
    old_kombu_python: Path,
) -> None:
    proc = _run(old_kombu_python, "-m", "fin_relay.cli", "worker", env=REDIS_ENV)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [REFUSAL]


@pytest.mark.integration
def test_the_celery_entry_point_refuses_it_too(old_kombu_python: Path) -> None:
    proc = _run(
        old_kombu_python, "-m", "celery", "-A", "fin_relay.worker.app", "worker", env=REDIS_ENV
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert REFUSAL in proc.stderr.splitlines(), proc.stderr


@pytest.mark.integration
def test_a_rabbitmq_worker_is_not_held_to_the_range(old_kombu_python: Path) -> None:
    code = (
        "from fin_relay.contract.settings import WorkerSettings, load; "
        "from fin_relay.worker.app import celery_config; "
        "from fin_relay.worker.startup import start_problems; "
        "s = load(WorkerSettings); print(repr(start_problems(s, celery_config(s))))"
    )
    amqp = {**REDIS_ENV, "FIN_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"}
    proc = _run(old_kombu_python, "-c", code, env=amqp)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    proc = _run(old_kombu_python, "-c", code, env=REDIS_ENV)  # the same check on Redis refuses
    assert proc.stdout.strip() == repr(
        [REFUSAL.removeprefix("fin-relay worker: refusing to start: ")]
    )


@pytest.mark.integration
def test_a_producer_is_not_held_to_the_range(old_kombu_python: Path, redis_url: str) -> None:
    proc = _run(
        old_kombu_python,
        "-m",
        "fin_relay.cli",
        "enqueue",
        "start",
        "--conversation-id",
        "c-old-kombu",
        "--user-id",
        "u1",
        "--message",
        "hello",
        env={"REDIS_URL": redis_url},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip(), proc.stderr

"""Packaging without symlinks: the top-level component folders are mapped into ``fin_relay``.

``pyproject.toml`` maps each top-level package folder (``worker/``, ``producer/``, ...) to
``fin_relay.<folder>`` with setuptools' ``package-dir``; nothing in the checkout is a symlink
(they break on Windows checkouts and in tools that do not follow them).
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
#: top-level folders that are not part of the installed package
NOT_INSTALLED = {"tests"}


def _top_level_packages() -> list[str]:
    return sorted(
        p.name
        for p in REPO.iterdir()
        if p.is_dir() and (p / "__init__.py").is_file() and p.name != "fin_relay"
    )


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout"
)
def test_the_repository_has_no_symlinks() -> None:
    listing = subprocess.run(
        ["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    links = [line.split("\t", 1)[1] for line in listing.splitlines() if line.startswith("120000")]
    assert links == []


def test_no_symlink_in_the_package_folders() -> None:
    for folder in ["fin_relay", *_top_level_packages()]:
        links = [p for p in (REPO / folder).rglob("*") if p.is_symlink()]
        assert links == [], links


def test_every_top_level_package_folder_maps_to_a_fin_relay_subpackage() -> None:
    folders = [name for name in _top_level_packages() if name not in NOT_INSTALLED]
    assert folders, "no component folder found"
    expected = {f"fin_relay.{name}": name for name in folders}
    assert SETUPTOOLS["package-dir"] == expected
    packages = set(SETUPTOOLS["packages"])
    assert set(expected) <= packages, set(expected) - packages
    for folder in folders:  # a folder of the same name in fin_relay/ would shadow the mapping
        assert not (REPO / "fin_relay" / folder).exists(), folder


def test_every_listed_package_is_a_package_folder() -> None:
    """``packages`` is explicit (package-dir rules out discovery): nothing missing or stale."""
    mapping = SETUPTOOLS["package-dir"]
    listed = set(SETUPTOOLS["packages"])
    found = {"fin_relay"}
    for name in ["fin_relay", *mapping]:
        root = REPO / mapping.get(name, name.replace(".", "/"))
        assert (root / "__init__.py").is_file(), name
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            if "__pycache__" not in rel.parts:
                found.add(".".join([name, *rel.parts]))
    assert listed == found


def test_every_component_imports_as_a_fin_relay_subpackage() -> None:
    for name in SETUPTOOLS["package-dir"]:
        module = importlib.import_module(name)
        assert module.__name__ == name

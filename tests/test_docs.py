"""Docs match the code: every setting is in the README's configuration table, every CLI
command in ``fin-relay --help`` is documented, every metric is listed."""

from __future__ import annotations

import re
from pathlib import Path

from fin_relay import observability
from fin_relay.cli import COMMANDS
from fin_relay.contract.settings import (
    CommonSettings,
    IngestSettings,
    ProducerSettings,
    WorkerSettings,
)

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", README))
    for cls in (CommonSettings, WorkerSettings, IngestSettings, ProducerSettings):
        for field in cls.model_fields:
            assert field.upper() in documented, f"{field.upper()} missing from README"


def test_every_command_is_documented() -> None:
    for name in COMMANDS:
        assert f"fin-relay {name}" in README, name


def test_every_metric_is_documented() -> None:
    for value in vars(observability).values():
        name = getattr(value, "_name", None)
        if isinstance(name, str) and name.startswith("fin_relay_"):
            assert name.removesuffix("_total") in README, name

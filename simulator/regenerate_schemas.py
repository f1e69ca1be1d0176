"""Regenerate the Intercom-derived schema files in ``simulator/schemas/``.

    python -m fin_relay.simulator.regenerate_schemas SRC_DIR [DEST_DIR]

``SRC_DIR`` holds Intercom's OpenAPI descriptions of the Fin Agent API converted to JSON, one file
per version: ``fin-agent-2.14.json``, ``fin-agent-2.15.json``, ``fin-agent-2.16.json`` and
``fin-agent-preview.json`` (the ``/fin/*`` paths, the components they reference and the
``fin_agent_*_event`` schemas, cut out of ``descriptions/<version>/api.intercom.io.yaml`` of
github.com/intercom/Intercom-OpenAPI). ``DEST_DIR`` defaults to this package's ``schemas/``.

Only the structure is carried over: every ``description``, ``example``, ``examples``,
``summary`` and ``title`` (and the presentation-only ``tags``, ``x-tags``, ``x-badges``,
``externalDocs``) is dropped, wherever it appears except as a property *name* inside
``properties``. ``info`` keeps its ``version`` and gains an ``x-source`` credit line. The output
keeps the source's key order, is indented by one space and ends with a newline, so the same input
always gives byte-identical files. ``fin-agent-2.17.json`` (written by hand: Intercom has
published no 2.17 description) is never read or written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: The files this script produces (and reads, under the same names, from ``SRC_DIR``).
DERIVED_FILES: tuple[str, ...] = (
    "fin-agent-2.14.json",
    "fin-agent-2.15.json",
    "fin-agent-2.16.json",
    "fin-agent-preview.json",
)

#: Keys dropped everywhere: prose, examples and presentation, not structure.
STRIPPED_KEYS: frozenset[str] = frozenset(
    {"description", "example", "examples", "summary", "title", "tags", "x-tags", "x-badges",
     "externalDocs"}
)  # fmt: skip

#: Objects whose keys are names chosen by the author (a property called ``title`` is structure).
_NAME_MAPS: frozenset[str] = frozenset(
    {"properties", "patternProperties", "definitions", "schemas", "paths", "responses",
     "content", "headers", "securitySchemes", "requestBodies"}
)  # fmt: skip

SOURCE_NOTE = (
    "Derived from Intercom's OpenAPI descriptions (github.com/intercom/Intercom-OpenAPI, MIT "
    "licence, Copyright (c) 2022 Intercom, Inc.): structure only."
)


def strip(node: Any, name_map: bool = False) -> Any:
    """``node`` without prose/example keys (keys of a name map are kept, their values stripped)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if not name_map and key in STRIPPED_KEYS:
                continue
            out[key] = strip(value, name_map=not name_map and key in _NAME_MAPS)
        return out
    if isinstance(node, list):
        return [strip(item) for item in node]
    return node


def derive(source: dict[str, Any]) -> dict[str, Any]:
    """The structure-only document for one of Intercom's descriptions."""
    doc: dict[str, Any] = strip(source)
    info = source.get("info", {})
    doc["info"] = {"version": info.get("version"), "x-source": SOURCE_NOTE}
    ordered = {"openapi": doc.pop("openapi", "3.0.1"), "info": doc.pop("info")}
    ordered.update(doc)
    return ordered


def render(doc: dict[str, Any]) -> str:
    """Deterministic JSON text: source key order, indent 1, UTF-8 kept, trailing newline."""
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def regenerate(src_dir: Path, dest_dir: Path) -> list[Path]:
    """Write every file of :data:`DERIVED_FILES` from ``src_dir`` into ``dest_dir``."""
    missing = [name for name in DERIVED_FILES if not (src_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"missing in {src_dir}: {', '.join(missing)}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DERIVED_FILES:
        source = json.loads((src_dir / name).read_text(encoding="utf-8"))
        target = dest_dir / name
        target.write_text(render(derive(source)), encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m fin_relay.simulator.regenerate_schemas",
        description="Regenerate the structure-only Fin Agent API schemas from Intercom's JSON.",
    )
    parser.add_argument("src_dir", type=Path, help="folder with Intercom's fin-agent-*.json")
    parser.add_argument(
        "dest_dir",
        type=Path,
        nargs="?",
        default=Path(__file__).resolve().parent / "schemas",
        help="output folder (default: the package's schemas/)",
    )
    args = parser.parse_args(argv)
    try:
        written = regenerate(args.src_dir, args.dest_dir)
    except (OSError, ValueError) as exc:
        print(f"regenerate_schemas: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

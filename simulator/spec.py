"""Intercom's Fin Agent API schemas, per ``Intercom-Version``, as JSON-Schema validators.

The documents in ``schemas/`` are OpenAPI 3.0: ``fin-agent-{2.14,2.15,2.16,preview}.json`` are
derived (structure only) from Intercom's published OpenAPI descriptions by
``regenerate_schemas.py``; ``fin-agent-2.17.json`` is written by hand from the 2.17 developer
docs, which have no OpenAPI description yet. This module is the simulator's referee for what a
version accepts: it never looks at fin-relay's own request models.

A request body schema is made self-contained and *closed* before it is compiled:

* every ``$ref`` is replaced by its target (OpenAPI 3.0: a ``$ref``'s siblings are ignored);
* ``allOf`` branches are merged into their parent (``properties`` and ``required`` united), so
  closing cannot make the branches contradict each other;
* OpenAPI's ``nullable: true`` becomes a JSON-Schema ``type`` that also allows ``null``;
* every object schema that lists ``properties`` and does not say ``additionalProperties`` gets
  ``additionalProperties: false``. Intercom's descriptions never say it, yet a field a version
  does not list is not part of that version (e.g. ``settings`` on 2.14): plain JSON-Schema would
  accept it silently. Objects that say ``additionalProperties: true`` (``attributes``) stay open.

Event schemas are left open by default (Fin adds fields without notice); ``closed=True`` closes
them the same way. Validation is JSON-Schema Draft 4 (what OpenAPI 3.0 builds on) with a local
format checker: ``date-time`` (strict RFC 3339), ``email``, ``uri`` and ``byte`` (base64).
"""

from __future__ import annotations

import binascii
import copy
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft4Validator, FormatChecker

__all__ = [
    "DOCUMENTED_DEVIATIONS",
    "OPERATION_PATHS",
    "VERSIONS",
    "Deviation",
    "SchemaError",
    "closed_event_schema",
    "closed_request_schema",
    "document",
    "event_error_details",
    "event_errors",
    "normalize_version",
    "operations",
    "parse_date_time",
    "request_error_details",
    "request_errors",
]

#: Every ``Intercom-Version`` that can call the Fin Agent API, oldest first.
VERSIONS: tuple[str, ...] = ("2.14", "2.15", "2.16", "2.17", "Preview")

#: Operation name -> path template, for every operation any version has (canonical order).
OPERATION_PATHS: dict[str, str] = {
    "start": "/fin/start",
    "reply": "/fin/reply",
    "csat": "/fin/csat",
    "ask": "/fin/ask",
    "escalate": "/fin/escalate",
    "capabilities": "/fin/capabilities",
    "procedure_run": "/fin/procedures/{procedure_id}/run",
}

_FILES: dict[str, str] = {
    "2.14": "fin-agent-2.14.json",
    "2.15": "fin-agent-2.15.json",
    "2.16": "fin-agent-2.16.json",
    "2.17": "fin-agent-2.17.json",
    "Preview": "fin-agent-preview.json",
}

#: JSON-Schema keywords whose value is one schema / a list of schemas / a name -> schema map.
_ONE = ("items", "additionalProperties", "not")
_MANY = ("allOf", "anyOf", "oneOf")
_MAP = ("properties", "patternProperties")


def normalize_version(version: str) -> str:
    """``version`` as spelled in :data:`VERSIONS` (``preview`` -> ``Preview``); ``ValueError``
    for anything else."""
    value = version.strip()
    if value.lower() == "preview":
        return "Preview"
    if value not in _FILES:
        raise ValueError(f"unknown Intercom-Version {version!r} (one of {', '.join(VERSIONS)})")
    return value


@cache
def _load(version: str) -> dict[str, Any]:
    text = resources.files(__package__ or "fin_relay.simulator").joinpath(
        "schemas", _FILES[version]
    )
    loaded: dict[str, Any] = json.loads(text.read_text(encoding="utf-8"))
    return loaded


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document of ``version`` as loaded from the package (cached: do not mutate)."""
    return _load(normalize_version(version))


@cache
def _operations(version: str) -> dict[str, str]:
    paths = _load(version).get("paths", {})
    return {
        name: path
        for name, path in OPERATION_PATHS.items()
        if isinstance(paths.get(path), dict) and "post" in paths[path]
    }


def operations(version: str) -> dict[str, str]:
    """Operation name -> path template for the operations ``version``'s document has."""
    return dict(_operations(normalize_version(version)))


# --- making a schema self-contained and closed -------------------------------------------------


def _pointer(doc: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs are supported: {ref!r}")
    node: Any = doc
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _resolve(node: Any, doc: dict[str, Any], seen: frozenset[str] = frozenset()) -> Any:
    """A copy of schema ``node`` with ``$ref``s inlined, ``allOf`` merged, ``nullable`` mapped."""
    if not isinstance(node, dict):
        return copy.deepcopy(node)
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            raise ValueError(f"recursive $ref {ref!r} cannot be inlined")
        return _resolve(_pointer(doc, ref), doc, seen | {ref})
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _MAP and isinstance(value, dict):
            out[key] = {name: _resolve(sub, doc, seen) for name, sub in value.items()}
        elif key in _MANY and isinstance(value, list):
            out[key] = [_resolve(sub, doc, seen) for sub in value]
        elif key in _ONE and isinstance(value, dict):
            out[key] = _resolve(value, doc, seen)
        elif key == "items" and isinstance(value, list):
            out[key] = [_resolve(sub, doc, seen) for sub in value]
        else:
            out[key] = copy.deepcopy(value)
    branches = out.pop("allOf", None)
    if branches:
        out = _merge(out, branches)
    return _nullable(out)


def _merge(base: dict[str, Any], branches: list[Any]) -> dict[str, Any]:
    """``base`` and its ``allOf`` branches as one schema: properties/required united; a keyword
    two branches disagree on is kept in a residual ``allOf`` (still enforced, never closed)."""
    result = dict(base)
    residual: list[dict[str, Any]] = []
    for branch in branches:
        if not isinstance(branch, dict):
            continue
        for key, value in branch.items():
            if key == "properties" and isinstance(value, dict):
                props = result.setdefault("properties", {})
                for name, sub in value.items():
                    if name in props and props[name] != sub:
                        props[name] = _merge({}, [props[name], sub])
                    else:
                        props[name] = sub
            elif key == "required" and isinstance(value, list):
                required = result.setdefault("required", [])
                required.extend(name for name in value if name not in required)
            elif key not in result:
                result[key] = value
            elif result[key] != value:
                residual.append({key: value})
    if residual:
        result["allOf"] = residual
    return result


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI 3.0 ``nullable: true`` -> a type (and enum) that allows ``null``."""
    if schema.pop("nullable", False) is not True:
        return schema
    kind = schema.get("type")
    if isinstance(kind, str):
        schema["type"] = [kind, "null"]
    elif isinstance(kind, list):
        if "null" not in kind:
            schema["type"] = [*kind, "null"]
    else:
        return {"anyOf": [schema, {"type": "null"}]}
    enum = schema.get("enum")
    if isinstance(enum, list) and None not in enum:
        schema["enum"] = [*enum, None]
    return schema


def _close(node: Any) -> Any:
    """Close (in place) every object schema listing ``properties`` without
    ``additionalProperties``."""
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
        node["additionalProperties"] = False
    for key, value in node.items():
        if key in _MAP and isinstance(value, dict):
            for sub in value.values():
                _close(sub)
        elif key in _MANY or (key == "items" and isinstance(value, list)):
            for sub in value:
                _close(sub)
        elif key in _ONE:
            _close(value)
    return node


@cache
def _request_schema(version: str, operation: str) -> dict[str, Any] | None:
    path = _operations(version).get(operation)
    if path is None:
        return None
    doc = _load(version)
    body = doc["paths"][path]["post"].get("requestBody")
    if body is None:
        return None
    if "$ref" in body:
        body = _pointer(doc, body["$ref"])
    schema = body.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return None
    closed: dict[str, Any] = _close(_resolve(schema, doc))
    Draft4Validator.check_schema(closed)
    return closed


def closed_request_schema(version: str, operation: str) -> dict[str, Any] | None:
    """The self-contained, closed JSON Schema of ``operation``'s request body in ``version``;
    ``None`` when the version has no such operation."""
    schema = _request_schema(normalize_version(version), operation)
    return copy.deepcopy(schema)


@cache
def _event_components(version: str) -> dict[str, str]:
    """``event_name`` value -> component name, for the version's ``fin_agent_*_event`` schemas."""
    schemas = _load(version).get("components", {}).get("schemas", {})
    out: dict[str, str] = {}
    for name, schema in schemas.items():
        if not (name.startswith("fin_agent_") and name.endswith("_event")):
            continue
        enum = schema.get("properties", {}).get("event_name", {}).get("enum", [])
        for value in enum:
            out[value] = name
    return out


@cache
def _event_schema(version: str, event_name: str, closed: bool) -> dict[str, Any] | None:
    component = _event_components(version).get(event_name)
    if component is None:
        return None
    doc = _load(version)
    schema: dict[str, Any] = _resolve(doc["components"]["schemas"][component], doc)
    if closed:
        _close(schema)
    Draft4Validator.check_schema(schema)
    return schema


def closed_event_schema(
    version: str, event_name: str, *, closed: bool = False
) -> dict[str, Any] | None:
    """The self-contained JSON Schema of the webhook event ``event_name`` (``fin_replied``,
    ``fin_status_updated``, ``fin_reply_chunk``, ``csat_requested``) in ``version``; ``None``
    when the version does not document it. Open unless ``closed=True`` (Fin adds fields)."""
    schema = _event_schema(normalize_version(version), event_name, closed)
    return copy.deepcopy(schema)


# --- formats -------------------------------------------------------------------------------------

_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|([+-])(\d{2}):(\d{2}))"
)
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def parse_date_time(value: str) -> datetime | None:
    """A strict RFC 3339 ``date-time`` as an aware datetime, else ``None``.

    ``YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)``; ``T``/``Z`` in either case (RFC 3339 5.6
    note); calendar-valid dates; a leap second (``:60``) only at 23:59 UTC (it parses as
    ``:59.999999``). Fractions beyond microseconds are truncated.
    """
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    if not 1 <= month <= 12 or day < 1 or hour > 23 or minute > 59 or second > 60:
        return None
    leap_year = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if day > _DAYS[month - 1] or (month == 2 and day == 29 and not leap_year):
        return None
    offset = timedelta(0)
    if match.group(9) is not None:
        off_h, off_m = int(match.group(10)), int(match.group(11))
        if off_h > 23 or off_m > 59:
            return None
        offset = timedelta(hours=off_h, minutes=off_m)
        if match.group(9) == "-":
            offset = -offset
    fraction = match.group(7)
    micros = int((fraction[1:] + "000000")[:6]) if fraction else 0
    try:
        moment = datetime(year, month, day, hour, minute, min(second, 59), micros, tzinfo=UTC)
    except ValueError:  # year 0
        return None
    moment -= offset
    if second == 60:
        if (moment.hour, moment.minute) != (23, 59):
            return None
        moment = moment.replace(microsecond=999_999)
    return moment


_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:(?://\S+|(?!//)\S+)")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

#: Only the four formats the schemas use, all checked locally (no optional packages).
FORMAT_CHECKER = FormatChecker(formats=())


def _is_date_time(instance: object) -> bool:
    return not isinstance(instance, str) or parse_date_time(instance) is not None


def _is_email(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    local, at, domain = instance.partition("@")
    return bool(at and local and domain and "@" not in domain)


def _is_uri(instance: object) -> bool:
    return not isinstance(instance, str) or _URI.fullmatch(instance) is not None


def _is_byte(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if _BASE64.fullmatch(instance) is None:
        return False
    try:
        binascii.a2b_base64(instance, strict_mode=True)
    except binascii.Error:
        return False
    return True


FORMAT_CHECKER.checks("date-time")(_is_date_time)
FORMAT_CHECKER.checks("email")(_is_email)
FORMAT_CHECKER.checks("uri")(_is_uri)
FORMAT_CHECKER.checks("byte")(_is_byte)


# --- validation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaError:
    """One validation error: ``path`` into the instance, the JSON-Schema ``keyword`` that failed.

    For ``required`` and ``additionalProperties`` the path ends with the missing / unexpected
    property (so ``field`` names it, like ``message.timestamp``).
    """

    path: tuple[str | int, ...]
    keyword: str
    message: str

    @property
    def field(self) -> str:
        """The dotted path (``attachments.1.data``); ``""`` for the body itself."""
        return ".".join(str(part) for part in self.path)

    def __str__(self) -> str:
        return f"{self.field or '(root)'}: {self.message}"


def _details(validator: Any, instance: object) -> list[SchemaError]:
    out: list[SchemaError] = []
    for error in validator.iter_errors(instance):
        path = tuple(error.absolute_path)
        keyword = str(error.validator)
        if keyword == "required" and isinstance(error.instance, dict):
            missing = [
                name
                for name in error.validator_value
                if name not in error.instance and error.message.startswith(repr(name))
            ]
            name = missing[0] if missing else None
            out.append(SchemaError(path if name is None else (*path, name), keyword, error.message))
        elif keyword == "additionalProperties" and isinstance(error.instance, dict):
            listed = error.schema.get("properties", {})
            for name in error.instance:
                if name not in listed:
                    out.append(
                        SchemaError(
                            (*path, name),
                            keyword,
                            f"Additional properties are not allowed ({name!r} was unexpected)",
                        )
                    )
        elif keyword == "oneOf" and all(
            isinstance(branch, dict) and set(branch) == {"required"}
            for branch in error.validator_value
        ):
            names = ", ".join(
                repr(name) for branch in error.validator_value for name in branch["required"]
            )
            out.append(SchemaError(path, keyword, f"exactly one of {names} is required"))
        else:
            out.append(SchemaError(path, keyword, _describe(keyword, error)))
    return out


def _describe(keyword: str, error: Any) -> str:
    """jsonschema's message, without a long repr of the instance."""
    instance = error.instance
    if keyword == "maxItems" and isinstance(instance, list):
        return f"too many items: {len(instance)} (at most {error.validator_value})"
    if keyword == "maxLength" and isinstance(instance, str):
        return f"too long: {len(instance)} characters (at most {error.validator_value})"
    message: str = error.message
    shown = repr(instance)
    if len(shown) > 60 and message.startswith(shown):
        message = shown[:40] + "..." + message[len(shown) :]
    return message


@cache
def _request_validator(version: str, operation: str) -> Any:
    schema = _request_schema(version, operation)
    return None if schema is None else Draft4Validator(schema, format_checker=FORMAT_CHECKER)


def request_error_details(version: str, operation: str, body: object) -> list[SchemaError]:
    """:func:`request_errors` as :class:`SchemaError` objects."""
    version = normalize_version(version)
    validator = _request_validator(version, operation)
    if validator is None:
        message = f"Intercom-Version {version} has no operation {operation!r}"
        return [SchemaError((), "operation", message)]
    return _details(validator, body)


def request_errors(version: str, operation: str, body: object) -> list[str]:
    """Why ``body`` is not a valid ``operation`` request in ``version``, one line per error
    (``"message.timestamp: 'timestamp' is a required property"``); empty when it is valid. An
    operation the version does not have is one error (``ValueError`` for an unknown version)."""
    return [str(error) for error in request_error_details(version, operation, body)]


@cache
def _event_validator(version: str, event_name: str, closed: bool) -> Any:
    schema = _event_schema(version, event_name, closed)
    return None if schema is None else Draft4Validator(schema, format_checker=FORMAT_CHECKER)


def event_error_details(version: str, event: object, *, closed: bool = False) -> list[SchemaError]:
    """:func:`event_errors` as :class:`SchemaError` objects."""
    version = normalize_version(version)
    if not isinstance(event, dict):
        return [SchemaError((), "type", f"{event!r} is not of type 'object'")]
    name = event.get("event_name")
    if not isinstance(name, str):
        return [SchemaError(("event_name",), "required", "'event_name' is a required property")]
    validator = _event_validator(version, name, closed)
    if validator is None:
        known = ", ".join(repr(n) for n in _event_components(version))
        return [
            SchemaError(
                ("event_name",),
                "enum",
                f"{name!r} is not an event of Intercom-Version {version} (one of {known})",
            )
        ]
    return _details(validator, event)


def event_errors(version: str, event: object, *, closed: bool = False) -> list[str]:
    """Why ``event`` is not a valid webhook event of ``version`` (keyed by its ``event_name``),
    one line per error; empty when valid. Unknown fields are accepted unless ``closed=True``."""
    return [str(error) for error in event_error_details(version, event, closed=closed)]


# --- where the simulator knowingly sends what a version's schema does not list --------------------


@dataclass(frozen=True)
class Deviation:
    """An event value Intercom's prose docs show but a version's OpenAPI enum does not list."""

    versions: tuple[str, ...]
    event_name: str
    path: tuple[str, ...]
    value: str
    why: str

    def excuses(self, version: str, event: object, error: str) -> bool:
        """True if ``error`` (a line of :func:`event_errors`) is this deviation."""
        if normalize_version(version) not in self.versions or not isinstance(event, dict):
            return False
        if event.get("event_name") != self.event_name:
            return False
        node: Any = event
        for part in self.path:
            node = node.get(part) if isinstance(node, dict) else None
        field = ".".join(self.path)
        return node == self.value and error.startswith(f"{field}: {self.value!r} is not one of")


#: The only places where the simulator's events knowingly fail their version's schema.
DOCUMENTED_DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        versions=("2.14", "2.15"),
        event_name="fin_status_updated",
        path=("status",),
        value="awaiting_user_reply",
        why=(
            "Intercom's guide shows fin_status_updated 'awaiting_user_reply' as the end of every "
            "turn (the done signal), while the 2.14/2.15 OpenAPI enum lists only escalated, "
            "resolved and complete. The simulator follows the guide."
        ),
    ),
)

"""Check a header against `schemas/af-1.0.schema.json` and turn each violation into a `Diagnostic`.

jsonschema reports *what* is wrong with an instance path; this module picks a stable code per
kind of violation (AF1xxx), points the span at the YAML node concerned (the key for unknown or
missing keys, the value otherwise) and adds a hint ("did you mean" for keys and enum values).
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, Iterator

from afcore.diagnostics import Diagnostic

if TYPE_CHECKING:
    from jsonschema import ValidationError

    from .yamlload import YamlDocument

__all__ = ["SCHEMA_FILE", "SchemaReport", "load_schema", "report_header", "validate_header"]

#: the header schema, shipped in the wheel as package data of ``afcore.schemas``
SCHEMA_FILE = "af-1.0.schema.json"

#: jsonschema keyword -> diagnostic code
_CODES = {
    "required": "AF1001",
    "type": "AF1002",
    "additionalProperties": "AF1003",
    "enum": "AF1004",
    "const": "AF1004",
    "minimum": "AF1005",
    "maximum": "AF1005",
    "exclusiveMinimum": "AF1005",
    "exclusiveMaximum": "AF1005",
    "format": "AF1006",
    "pattern": "AF1007",
    "minLength": "AF1008",
    "maxLength": "AF1008",
    "minItems": "AF1008",
    "maxItems": "AF1008",
}
#: code for any violation without its own code
_OTHER = "AF1009"

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_JSON_TYPES = {"integer": "an integer", "number": "a number", "string": "a string", "array": "a list",
               "object": "a mapping", "boolean": "true or false", "null": "null"}


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """Return the header schema as a dict (read once).

    Returns:
        The parsed JSON Schema 2020-12 document.
    """
    text = resources.files("afcore.schemas").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft202012Validator, FormatChecker

    checker = FormatChecker(formats=())
    checker.checks("date-time")(_is_rfc3339)
    # The schema itself is checked against the metaschema by the tests, not on every run (~100 ms).
    return Draft202012Validator(load_schema(), format_checker=checker)


def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SchemaReport:
    """What the schema found in a header: the diagnostics, and which nodes they make unusable.

    The semantic checks (`afc.check`) ask `is_valid` about the nodes they read, so that each runs
    whenever its own inputs are sound, in the same run as the schema errors elsewhere.

    Attributes:
        diagnostics: one per violation (codes AF1001-AF1009).
        error_paths: instance paths of every violation, each with its jsonschema keyword.
    """

    diagnostics: list[Diagnostic]
    error_paths: frozenset[tuple[tuple, str]]

    def is_valid(self, path: tuple) -> bool:
        """Return whether the node at ``path`` and everything under it satisfies the schema.

        A violation inside the node's subtree makes it invalid; so does a wrong type of an
        ancestor (the node then cannot mean anything). Other violations of an ancestor, such
        as a missing or unknown sibling key, leave the node valid.

        Args:
            path: instance path, e.g. ``("neural_config", "hidden_layers")``.

        Returns:
            True when the node may be read as the schema describes it (if present).
        """
        size = len(path)
        for error_path, keyword in self.error_paths:
            if error_path[:size] == path:
                return False
            if keyword == "type" and path[: len(error_path)] == error_path:
                return False
        return True


def validate_header(document: YamlDocument) -> list[Diagnostic]:
    """Check a parsed header against the schema.

    Args:
        document: the header from `afc.yamlload.load_yaml`.

    Returns:
        One diagnostic per violation (codes AF1001-AF1009, and AF1010 for a NaN or infinite number),
        in no particular order.
    """
    return report_header(document).diagnostics


def report_header(document: YamlDocument) -> SchemaReport:
    """Check a parsed header against the schema, keeping where each violation is.

    Args:
        document: the header from `afc.yamlload.load_yaml`.

    Returns:
        The diagnostics (as `validate_header`) and the paths they are about.
    """
    diagnostics: list[Diagnostic] = []
    seen: set[tuple] = set()
    errors = list(_validator().iter_errors(document.data))
    # JSON Schema has no keyword for "finite": NaN passes every range. A non-finite number is
    # reported once (AF1010), not also against its range.
    non_finite = dict(_iter_non_finite(document.data))
    diagnostics += [_non_finite_error(path, value, document) for path, value in non_finite.items()]
    # A value of the wrong type also fails its enum/range/pattern: report only the type.
    mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    for error in errors:
        if tuple(error.absolute_path) in non_finite:
            continue
        if error.validator != "type" and tuple(error.absolute_path) in mistyped:
            continue
        for diagnostic, key in _convert(error, document):
            if key not in seen:
                seen.add(key)
                diagnostics.append(diagnostic)
    paths = frozenset({(tuple(e.absolute_path), str(e.validator)) for e in errors}
                      | {(path, "finite") for path in non_finite})
    return SchemaReport(diagnostics, paths)


def _iter_non_finite(data: Any) -> Iterator[tuple[tuple, float]]:
    """Yield the path and value of every NaN or infinite number in the header (YAML `.nan`, `.inf`, `1e999`)."""
    stack: list[tuple[tuple, Any]] = [((), data)]
    while stack:  # iterative: the header is at most 32 levels deep, but a walk needs no recursion
        path, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            yield path, node
        elif isinstance(node, dict):
            stack += [((*path, key), value) for key, value in node.items()]
        elif isinstance(node, list):
            stack += [((*path, index), value) for index, value in enumerate(node)]


def _non_finite_error(path: tuple, value: float, document: YamlDocument) -> Diagnostic:
    name = f"`{_dotted(path)}`" if path else "the header"
    return Diagnostic("AF1010", "error", f"{name} must be a finite number", span=document.span_of(path),
                      label=f"found {value}", help="write a finite number: `.nan`, `.inf` and numbers "
                      "beyond 1.8e308 (which YAML reads as infinity) cannot be encoded in a bundle")


def _convert(error: ValidationError, document: YamlDocument) -> Iterator[tuple[Diagnostic, tuple]]:
    path = tuple(error.absolute_path)
    if error.validator == "required":
        yield from _missing(error, path, document)
    elif error.validator == "additionalProperties":
        yield from _unknown(error, path, document)
    else:
        diagnostic = _value_error(error, path, document)
        yield diagnostic, (path, error.validator)


def _missing(error: ValidationError, path: tuple, document: YamlDocument) -> Iterator[tuple[Diagnostic, tuple]]:
    properties = error.schema.get("properties", {})
    for name in error.validator_value:
        if isinstance(error.instance, dict) and name in error.instance:
            continue
        where = f"`{_dotted(path)}`" if path else "the header"
        expected = _expected(properties.get(name, {}))
        example = f"`{name}: <{expected}>`" if expected else f"`{name}: ...`"
        span = document.span_of(path, part="key") if path else _first_key(document)
        yield Diagnostic("AF1001", "error", f"{where} is missing the required key `{name}`", span=span,
                         label=f"`{name}` missing here" if path else None,
                         help=f"add {example}; see docs/format.md"), (path, "required", name)


def _unknown(error: ValidationError, path: tuple, document: YamlDocument) -> Iterator[tuple[Diagnostic, tuple]]:
    known = list(error.schema.get("properties", {}))
    for name in error.instance:
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else f"allowed keys here: {', '.join(known)}"
        where = f"in `{_dotted(path)}`" if path else "at the top of the header"
        yield Diagnostic("AF1003", "error", f"unknown key `{name}` {where}",
                         span=document.span_of((*path, name), part="key"), label="not a known key",
                         help=hint), (path, "additionalProperties", name)


def _value_error(error: ValidationError, path: tuple, document: YamlDocument) -> Diagnostic:
    keyword = str(error.validator)
    code = _CODES.get(keyword, _OTHER)
    name = f"`{_dotted(path)}`" if path else "the header"
    message, hint, label = _describe(keyword, error, name)
    return Diagnostic(code, "error", message, span=document.span_of(path), label=label, help=hint)


def _describe(keyword: str, error: ValidationError, name: str) -> tuple[str, str | None, str | None]:
    value, expected = error.instance, error.validator_value
    if keyword == "type":
        wanted = _JSON_TYPES.get(expected, str(expected)) if isinstance(expected, str) else str(expected)
        return f"{name} must be {wanted}", _type_hint(error), f"found {_json_type(value)}"
    if keyword in ("enum", "const"):
        options = expected if keyword == "enum" else [expected]
        close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.5)
        hint = f"did you mean `{close[0]}`?" if close else f"use one of: {', '.join(map(str, options))}"
        shown = ", ".join(f"`{o}`" for o in options)
        return f"{name} must be one of {shown}", hint, f"found `{value}`"
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        relation = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "greater than",
                    "exclusiveMaximum": "less than"}[keyword]
        hint = f"change it to a value {relation} {expected}"
        if "description" in error.schema:  # say why the bound is there, e.g. `cpu_cores` starts threads
            hint = f"{error.schema['description']}: {hint}"
        return f"{name} must be {relation} {expected}", hint, f"found {value}"
    if keyword == "format":
        return (f"{name} is not an RFC 3339 date-time", "write it like `2025-07-13T19:24:55.000Z` (UTC) or with an "
                "offset such as `+02:00`", None)
    if keyword == "pattern":
        return (f"{name} may contain only letters, digits, `.`, `_` and `-`, starting with a letter or digit",
                "e.g. `classification-agent`", None)
    if keyword in ("minLength", "maxLength", "minItems", "maxItems"):
        unit = "characters" if "Length" in keyword else "items"
        relation = "at least" if keyword.startswith("min") else "at most"
        hint = "shorten it" if relation == "at most" else "add to it"
        return f"{name} must have {relation} {expected} {unit}", hint, f"found {len(value)}"
    return f"{name}: {error.message}", None, None


def _type_hint(error: ValidationError) -> str | None:
    schema = error.schema
    if schema.get("type") == "integer" and isinstance(error.instance, float) and error.instance.is_integer():
        return f"write `{int(error.instance)}` without a decimal point"
    if schema.get("type") == "string" and not isinstance(error.instance, (dict, list)):
        return "put the value in quotes to make it a string"
    if schema.get("type") == "integer":
        return "layer sizes and counts are positive whole numbers"
    return schema.get("description")


def _expected(schema: dict[str, Any]) -> str | None:
    if "enum" in schema:
        return "|".join(map(str, schema["enum"]))
    if "$ref" in schema:
        return "positive integer" if schema["$ref"].endswith("layer_size") else "list of steps"
    kind = schema.get("type")
    return {"object": "mapping", "array": "list"}.get(kind, kind)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "a mapping"


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _first_key(document: YamlDocument) -> Any:
    keys = [p for p in document.positions if len(p) == 1]
    return document.span_of(keys[0], part="key") if keys else document.source.span(0, 0)

"""The JSON-schema subset tools use: type lists, coercion of text values, and argument validation."""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping
from typing import Any

_INT_RE = re.compile(r"[+-]?\d+")
_LITERAL_LIMIT = 100_000
_JSON_TYPES = ("string", "integer", "number", "boolean", "object", "array", "null")


def schema_types(schema: Any) -> list[str]:
    """The JSON types a schema allows, in the order it names them (`type`, lists, anyOf/oneOf, enum)."""
    if not isinstance(schema, Mapping):
        return []
    declared = schema.get("type")
    out: list[str] = []
    if isinstance(declared, str):
        out.append(declared)
    elif isinstance(declared, list):
        out.extend(t for t in declared if isinstance(t, str))
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or ():
            out.extend(schema_types(sub))
    if not out:
        literals = schema.get("enum") or ([schema["const"]] if "const" in schema else [])
        out.extend(json_type(v) for v in literals)
    return list(dict.fromkeys(t for t in out if t in _JSON_TYPES))


def json_type(value: Any) -> str:
    """The JSON type name of a Python value (bool is boolean, not integer)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def is_plain_string(schema: Any) -> bool:
    """True when a value under this schema is always the raw text (string, string enum, or no schema)."""
    types = schema_types(schema)
    return not types or types == ["string"]


def _as_int(text: str) -> tuple[bool, Any]:
    if _INT_RE.fullmatch(text):
        return True, int(text)
    ok, number = _as_number(text)
    if ok and float(number).is_integer():
        return True, int(number)
    return False, None


def _as_number(text: str) -> tuple[bool, Any]:
    if _INT_RE.fullmatch(text):
        return True, int(text)
    try:
        number = float(text)
    except ValueError:
        return False, None
    return (True, number) if math.isfinite(number) else (False, None)


def _as_bool(text: str) -> tuple[bool, Any]:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return True, lowered == "true"
    return False, None


_PARSE_ERRORS = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError)


def load_json_or_literal(text: str) -> tuple[bool, Any, str | None]:
    """(ok, value, error): JSON, else a Python literal (models echo reprs like {'a': True}); never raises."""
    try:
        return True, json.loads(text), None
    except _PARSE_ERRORS as e:
        error = f"{type(e).__name__}: {e}" if isinstance(e, RecursionError) else str(e)
    if len(text) <= _LITERAL_LIMIT:
        try:
            return True, ast.literal_eval(text), None
        except _PARSE_ERRORS:
            pass
    return False, None, error


def _as_container(text: str, kind: type) -> tuple[bool, Any]:
    ok, value, _ = load_json_or_literal(text)
    if kind is list and isinstance(value, tuple):
        value = list(value)
    return (True, value) if ok and isinstance(value, kind) else (False, None)


_COERCERS = {
    "integer": _as_int,
    "number": _as_number,
    "boolean": _as_bool,
    "object": lambda text: _as_container(text, dict),
    "array": lambda text: _as_container(text, list),
}


def coerce_text(raw: str, schema: Any) -> tuple[Any, str | None]:
    """Turn a parameter's raw text into the value its schema asks for; (value, error or None).

    Non-string types are tried in schema order, string last; `null`/`None` becomes None. A value
    that fits no type stays the raw string and comes with an error naming the expected types.
    """
    types = schema_types(schema)
    if not types or types == ["string"]:
        return raw, None
    text = raw.strip()
    if text in ("null", "None") and ("null" in types or "string" not in types):
        return None, (None if "null" in types else f"expected {' or '.join(types)}, got null")
    for kind in types:
        coercer = _COERCERS.get(kind)
        if coercer is not None:
            ok, value = coercer(text)
            if ok:
                return value, None
    if "string" in types:
        return raw, None
    return raw, f"expected {' or '.join(types)}, got {_short(raw)!r}"


def coerce_value(value: Any, schema: Any) -> tuple[Any, str | None]:
    """Coerce an already-decoded JSON value: only strings under a non-string schema are converted."""
    if isinstance(value, str) and "string" not in schema_types(schema) and schema_types(schema):
        return coerce_text(value, schema)
    return value, None


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate(value: Any, schema: Any, path: str = "arguments") -> list[str]:
    """Check a value against a JSON schema (type, enum, const, properties, required, items, bounds).

    Returns one message per problem, each naming the path, e.g. `arguments.days: expected integer, got "x"`.
    """
    if not isinstance(schema, Mapping):
        return []
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if branches and all(validate(value, sub, path) for sub in branches):
            return [f"{path}: {_show(value)} matches none of the allowed schemas"]
    types = [t for t in _declared(schema) if t in _JSON_TYPES]
    if types and not any(_is_type(value, t) for t in types):
        return [f"{path}: expected {' or '.join(types)}, got {json_type(value)} {_show(value)}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {_show(value)} is not one of {json.dumps(schema['enum'])}"]
    if "const" in schema and value != schema["const"]:
        return [f"{path}: must be {json.dumps(schema['const'])}, got {_show(value)}"]
    errors = _check_bounds(value, schema, path)
    if isinstance(value, Mapping):
        errors += _validate_object(value, schema, path)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors


def _declared(schema: Mapping) -> list[str]:
    declared = schema.get("type")
    if isinstance(declared, str):
        return [declared]
    return list(declared) if isinstance(declared, list) else []


def _is_type(value: Any, kind: str) -> bool:
    actual = json_type(value)
    return actual == kind or (kind == "number" and actual == "integer")


def _validate_object(value: Mapping, schema: Mapping, path: str) -> list[str]:
    errors: list[str] = []
    props = schema.get("properties") or {}
    for name in schema.get("required") or ():
        if name not in value:
            errors.append(f"{path}: missing required argument {name!r}")
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in props:
            errors += validate(item, props[name], f"{path}.{name}")
        elif extra is False:
            known = ", ".join(props) or "none"
            errors.append(f"{path}: unknown argument {name!r} (known: {known})")
        elif isinstance(extra, Mapping):
            errors += validate(item, extra, f"{path}.{name}")
    return errors


def _check_bounds(value: Any, schema: Mapping, path: str) -> list[str]:
    checks = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        checks = [("minimum", value, lambda lo: value >= lo), ("maximum", value, lambda hi: value <= hi)]
    elif isinstance(value, str):
        checks = [("minLength", len(value), lambda lo: len(value) >= lo),
                  ("maxLength", len(value), lambda hi: len(value) <= hi)]
    elif isinstance(value, list):
        checks = [("minItems", len(value), lambda lo: len(value) >= lo),
                  ("maxItems", len(value), lambda hi: len(value) <= hi)]
    return [
        f"{path}: {key} is {schema[key]}, got {measured}"
        for key, measured, ok in checks
        if isinstance(schema.get(key), (int, float)) and not ok(schema[key])
    ]


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return _short(text)

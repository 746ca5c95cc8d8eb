"""JSON-schema coercion of text values (XML parameters) and argument validation."""

from __future__ import annotations

import pytest

from qla_agent.tools.schema import coerce_text, coerce_value, is_plain_string, schema_types, validate

CASES = [
    ("string", {"type": "string"}, " 42 ", " 42 ", None),
    ("no-schema", None, "[1]", "[1]", None),
    ("integer", {"type": "integer"}, "-7", -7, None),
    ("integer-from-float-text", {"type": "integer"}, "3.0", 3, None),
    ("integer-bad", {"type": "integer"}, "3.5", "3.5", "expected integer"),
    ("number-int", {"type": "number"}, "2", 2, None),
    ("number-float", {"type": "number"}, "1e-3", 0.001, None),
    ("number-nan-refused", {"type": "number"}, "nan", "nan", "expected number"),
    ("boolean-json", {"type": "boolean"}, "false", False, None),
    ("boolean-python", {"type": "boolean"}, "True", True, None),
    ("boolean-bad", {"type": "boolean"}, "yes", "yes", "expected boolean"),
    ("object-json", {"type": "object"}, '{"a": [1, 2]}', {"a": [1, 2]}, None),
    ("object-python", {"type": "object"}, "{'a': None, 'b': False}", {"a": None, "b": False}, None),
    ("object-wrong-kind", {"type": "object"}, "[1]", "[1]", "expected object"),
    ("object-set-literal", {"type": "object"}, "{{}}", "{{}}", "expected object"),
    ("array-too-deep", {"type": "array"}, "[" * 5000 + "]" * 5000, "[" * 5000 + "]" * 5000, "expected array"),
    ("array-json", {"type": "array"}, '["x"]', ["x"], None),
    ("array-python-tuple", {"type": "array"}, "(1, 2)", [1, 2], None),
    ("null", {"type": "null"}, "null", None, None),
    ("nullable-string-null", {"type": ["string", "null"]}, "None", None, None),
    ("nullable-string-text", {"type": ["string", "null"]}, "text", "text", None),
    ("anyof-int-null", {"anyOf": [{"type": "integer"}, {"type": "null"}]}, "null", None, None),
    ("anyof-int-null-int", {"anyOf": [{"type": "integer"}, {"type": "null"}]}, "5", 5, None),
    ("int-not-nullable-null", {"type": "integer"}, "null", None, "got null"),
    ("int-or-string", {"type": ["integer", "string"]}, "x1", "x1", None),
    ("string-enum", {"type": "string", "enum": ["a", "b"]}, "a", "a", None),
    ("untyped-int-enum", {"enum": [1, 2]}, "2", 2, None),
]


@pytest.mark.parametrize(("schema", "raw", "ref", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_coerce_text(schema, raw, ref, error):
    out, err = coerce_text(raw, schema)
    assert out == ref and type(out) is type(ref)
    assert (err is None) if error is None else (error in err)


def test_coerce_value_converts_only_strings_under_typed_schemas():
    assert coerce_value("3", {"type": "integer"}) == (3, None)
    assert coerce_value(3, {"type": "string"}) == (3, None)
    assert coerce_value("3", {"type": "string"}) == ("3", None)
    assert coerce_value("3", None) == ("3", None)


def test_schema_types_and_plain_string():
    assert schema_types({"type": ["integer", "null"], "anyOf": [{"type": "string"}]}) == ["integer", "null", "string"]
    assert schema_types({"const": True}) == ["boolean"]
    assert is_plain_string({"type": "string", "enum": ["a"]})
    assert is_plain_string(None)
    assert not is_plain_string({"type": ["string", "null"]})


SCHEMA = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "minLength": 1},
        "n": {"type": "integer", "minimum": 1, "maximum": 10},
        "mode": {"enum": ["r", "w"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "opt": {"anyOf": [{"type": "number"}, {"type": "null"}]},
    },
    "required": ["path"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(("args", "ref"), [
    ({"path": "a", "n": 3, "mode": "r", "tags": ["x"], "opt": None}, []),
    ({}, ["arguments: missing required argument 'path'"]),
    ({"path": ""}, ["arguments.path: minLength is 1, got 0"]),
    ({"path": "a", "n": True}, ["arguments.n: expected integer, got boolean true"]),
    ({"path": "a", "n": 11}, ["arguments.n: maximum is 10, got 11"]),
    ({"path": "a", "n": 2.0}, ["arguments.n: expected integer, got number 2.0"]),
    ({"path": "a", "mode": "x"}, ['arguments.mode: "x" is not one of ["r", "w"]']),
    ({"path": "a", "tags": ["x", 1]}, ["arguments.tags[1]: expected string, got integer 1"]),
    ({"path": "a", "tags": ["x", "y", "z"]}, ["arguments.tags: maxItems is 2, got 3"]),
    ({"path": "a", "opt": "s"}, ['arguments.opt: "s" matches none of the allowed schemas']),
    ({"path": "a", "zzz": 1}, ["arguments: unknown argument 'zzz' (known: path, n, mode, tags, opt)"]),
], ids=["ok", "missing", "min-length", "bool-not-int", "maximum", "float-not-int", "enum", "items",
        "max-items", "any-of", "extra"])
def test_validate(args, ref):
    assert validate(args, SCHEMA) == ref

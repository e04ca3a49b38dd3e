"""Validate a compose file against the Compose Specification's JSON schema, offline.

The schema, compose_spec.json beside this file, is vendored byte for byte from the PyPI wheel
docker_compose-1.29.2-py2.py3-none-any.whl (path compose/config/compose_spec.json, Apache-2.0, Docker Inc.;
sha256 in SCHEMA_SHA256): no docker engine or compose plugin runs here, and tests fetch nothing.

`jsonschema` validates when it is installed; otherwise `validate` below, which implements exactly the
keywords that schema uses (and refuses any other, so a changed schema cannot pass unchecked). The tests
hold both to the same verdicts on good and broken files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("compose_spec.json")
SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"

_ANNOTATIONS = {
    "$schema",
    "id",
    "$id",
    "title",
    "description",
    "deprecated",
    "format",
    "default",
    "definitions",
}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate(instance: Any, schema: dict[str, Any] | None = None) -> list[str]:
    """Every violation of the schema, as 'path: problem' strings; [] when the instance is valid."""
    root = schema if schema is not None else load_schema()
    errors: list[str] = []
    _check(instance, root, root, "$", errors)
    return errors


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref is supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str, errors: list[str]) -> None:
    unknown = set(schema) - _ANNOTATIONS - {key for keys, _ in _RULES for key in keys}
    if unknown:
        raise ValueError(f"schema keyword(s) {sorted(unknown)} at {path} are not implemented")
    for keys, rule in _RULES:
        if any(key in schema for key in keys):
            rule(value, schema, root, path, errors)


def _ref(value, schema, root, path, errors):
    _check(value, _resolve(root, schema["$ref"]), root, path, errors)


def _type(value, schema, root, path, errors):
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if not any(_TYPES[t](value) for t in types):
        errors.append(f"{path}: {value!r} is not of type {' or '.join(types)}")


def _enum(value, schema, root, path, errors):
    if value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")


def _properties(value, schema, root, path, errors):
    if not isinstance(value, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key in value:
            _check(value[key], sub, root, f"{path}.{key}", errors)
    for pattern, sub in schema.get("patternProperties", {}).items():
        for key in value:
            if re.search(pattern, key):
                _check(value[key], sub, root, f"{path}.{key}", errors)
    extra = schema.get("additionalProperties", True)
    for key in value:
        if key in schema.get("properties", {}) or any(
            re.search(p, key) for p in schema.get("patternProperties", {})
        ):
            continue
        if extra is False:
            errors.append(f"{path}: additional property {key!r} is not allowed")
        elif isinstance(extra, dict):
            _check(value[key], extra, root, f"{path}.{key}", errors)


def _required(value, schema, root, path, errors):
    if isinstance(value, dict):
        errors += [f"{path}: {key!r} is required" for key in schema["required"] if key not in value]


def _items(value, schema, root, path, errors):
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, schema["items"], root, f"{path}[{i}]", errors)


def _unique(value, schema, root, path, errors):
    if schema["uniqueItems"] and isinstance(value, list):
        seen = [json.dumps(v, sort_keys=True) for v in value]
        if len(seen) != len(set(seen)):
            errors.append(f"{path}: items are not unique")


def _bound(value, schema, root, path, errors):
    if not _TYPES["number"](value):
        return
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: {value} is above the maximum {schema['maximum']}")


def _passing(value, alternatives, root, path) -> int:
    count = 0
    for sub in alternatives:
        errs: list[str] = []
        _check(value, sub, root, path, errs)
        count += not errs
    return count


def _one_of(value, schema, root, path, errors):
    passing = _passing(value, schema["oneOf"], root, path)
    if passing != 1:
        errors.append(f"{path}: {value!r} matches {passing} of the oneOf alternatives, not exactly 1")


def _any_of(value, schema, root, path, errors):
    if not _passing(value, schema["anyOf"], root, path):
        errors.append(f"{path}: {value!r} matches none of the anyOf alternatives")


# (keywords, rule): a rule runs once when its schema holds any of its keywords.
_RULES = (
    (("$ref",), _ref),
    (("type",), _type),
    (("enum",), _enum),
    (("properties", "patternProperties", "additionalProperties"), _properties),
    (("required",), _required),
    (("items",), _items),
    (("uniqueItems",), _unique),
    (("minimum", "maximum"), _bound),
    (("oneOf",), _one_of),
    (("anyOf",), _any_of),
)

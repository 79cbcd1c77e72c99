"""JSON Schema checks for golden items: `jsonschema` when it is installed (the `report` extra, and a
litellm dependency), else a small built-in validator of the keywords golden sets use.

The built-in one knows `type` (a name or a list), `enum`, `const`, `required`, `properties`,
`additionalProperties` (true/false or a schema), `items` (one schema) and `minItems`/`maxItems`; other
keywords are not checked (`check_schema` says which ones, so a golden file does not silently pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
BUILTIN_KEYWORDS = frozenset({"type", "enum", "const", "required", "properties", "additionalProperties", "items",
                              "minItems", "maxItems", "$schema", "title", "description", "default", "examples"})
_MISSING = object()


def _jsonschema() -> Any:
    try:
        import jsonschema
    except ImportError:
        return None
    return jsonschema


def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return name == "number" and isinstance(value, (int, float))


def builtin_schema_problems(schema: Any, path: str = "") -> list[str]:
    """What the built-in validator cannot check in `schema` (unknown keywords, bad types)."""
    where = path or "(root)"
    if isinstance(schema, bool):
        return []
    if not isinstance(schema, Mapping):
        return [f"{where}: a schema must be an object"]
    problems = [f"{where}: keyword {k!r} is not checked by the built-in validator (pip install jsonschema)"
                for k in schema if k not in BUILTIN_KEYWORDS]
    types = schema.get("type", [])
    for t in [types] if isinstance(types, str) else types if isinstance(types, list) else [None]:
        if t not in TYPES:
            problems.append(f"{where}: type must be one of {', '.join(TYPES)} (or a list of them); got {t!r}")
    req = schema.get("required", [])
    if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
        problems.append(f"{where}: required must be a list of property names")
    if "enum" in schema and not isinstance(schema["enum"], list):
        problems.append(f"{where}: enum must be a list")
    props = schema.get("properties", {})
    if not isinstance(props, Mapping):
        problems.append(f"{where}: properties must be an object")
    else:
        for name, sub in props.items():
            problems += builtin_schema_problems(sub, f"{path}.properties.{name}" if path else f"properties.{name}")
    for key in ("items", "additionalProperties"):
        sub = schema.get(key, _MISSING)
        if sub is not _MISSING:
            problems += builtin_schema_problems(sub, f"{path}.{key}" if path else key)
    return problems


def builtin_errors(value: Any, schema: Any, path: str = "$") -> list[str]:
    """Why `value` does not match `schema` (empty when it does), with the JSON path of each problem."""
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{path}: not allowed"]
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(value, t) for t in names):
            return [f"{path}: expected {' or '.join(names)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} is not {schema['const']!r}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: {name!r} is required")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, sub in value.items():
            if name in props:
                errors += builtin_errors(sub, props[name], f"{path}.{name}")
            elif extra is False:
                errors.append(f"{path}: unexpected property {name!r}")
            elif isinstance(extra, Mapping):
                errors += builtin_errors(sub, extra, f"{path}.{name}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += builtin_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def schema_problems(schema: Any) -> list[str]:
    """Why `schema` cannot be used (empty when it can)."""
    js = _jsonschema()
    if js is None:
        return builtin_schema_problems(schema)
    try:
        js.validators.validator_for(schema).check_schema(schema)
    except js.exceptions.SchemaError as exc:
        return [str(exc.message)]
    return []


def validation_errors(value: Any, schema: Any) -> list[str]:
    """Why `value` does not validate against `schema` (empty when it does)."""
    js = _jsonschema()
    if js is None:
        return builtin_errors(value, schema)
    validator = js.validators.validator_for(schema)(schema)
    return [f"{e.json_path}: {e.message}" for e in sorted(validator.iter_errors(value), key=lambda e: e.json_path)]

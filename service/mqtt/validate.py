"""A small JSON Schema validator for the subset the topic table uses (jsonschema is a dev tool only).

Keywords: type (name or list), properties, required, additionalProperties (bool or schema), enum,
minimum, maximum, minLength, maxLength, items, description. Anything else is refused, so the table
cannot silently use a keyword this validator ignores (a test checks every schema).
"""

from __future__ import annotations

from typing import Any

from service.mqtt.bounded_json import quote

SUPPORTED = frozenset(
    {"type", "properties", "required", "additionalProperties", "enum", "minimum", "maximum",
     "minLength", "maxLength", "items", "description"}
)  # fmt: skip

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == v,
}


def unsupported_keywords(schema: dict[str, Any], path: str = "#") -> list[str]:
    """Keywords in ``schema`` (recursively) that :func:`validate` does not implement."""
    bad = [f"{path}/{k}" for k in schema if k not in SUPPORTED]
    for name, sub in schema.get("properties", {}).items():
        bad += unsupported_keywords(sub, f"{path}/properties/{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            bad += unsupported_keywords(schema[key], f"{path}/{key}")
    return bad


def validate(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Problems with ``value`` (empty when it is valid), each naming where: ``value.param: ...``."""
    where = path or "message"
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_TYPES[n](value) for n in names):
            return [f"{where}: expected {' or '.join(names)}, got {_json_type(value)}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {quote(value)} is not one of {schema['enum']}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']} characters")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing required field '{key}'")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            key = key if len(key) <= 40 else quote(key)  # hostile keys are quoted, cut short
            sub = f"{path}.{key}" if path else key
            if key in props:
                errors += validate(item, props[key], sub)
            elif extra is False:
                errors.append(f"{where}: unknown field '{key}'")
            elif isinstance(extra, dict):
                errors += validate(item, extra, sub)
    return errors


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](value):
            return name
    return type(value).__name__

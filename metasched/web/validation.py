"""A small JSON Schema subset validator: the request schemas published in /openapi.json are the ones
the API enforces, so the document and the behaviour cannot drift apart.

Supported keywords: type, enum, minimum, maximum, exclusiveMinimum, minLength, maxLength, pattern, items,
maxItems, properties, required, additionalProperties (false or a schema), minProperties, oneOf of types.
"""
from __future__ import annotations

import re

from ..errors import Invalid

_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _type_name(v) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](v):
            return name
    return type(v).__name__


def _unicode(text: str, where: str) -> None:
    """JSON can escape a lone surrogate (``"\\udc80"``) that no UTF-8 text holds: refuse it here, by name,
    before it reaches SQLite (which cannot store it) or a command line."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Invalid(f"{where}: not valid Unicode text (a lone surrogate {text[exc.start]!r} at position "
                      f"{exc.start})", field=where) from None


def validate(value, schema: dict, path: str = "") -> None:
    """Raise Invalid naming the field path and what was expected; unknown fields are named together."""
    where = path or "body"
    if "oneOf" in schema:
        same_type = None     # the error of the alternative whose type the value has: the one that says why
        for sub in schema["oneOf"]:
            try:
                validate(value, sub, path)
                return
            except Invalid as exc:
                st = sub.get("type")
                if same_type is None and st is not None and any(
                        _TYPES[x](value) for x in (st if isinstance(st, list) else [st])):
                    same_type = exc
        if same_type is not None:
            raise same_type
        kinds = " or ".join(s.get("type", "?") if isinstance(s.get("type"), str) else "/".join(s["type"])
                            for s in schema["oneOf"])
        raise Invalid(f"{where}: expected {kinds}, got {_type_name(value)}", field=where)
    t = schema.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_TYPES[x](value) for x in types):
            raise Invalid(f"{where}: expected {' or '.join(types)}, got {_type_name(value)}", field=where)
    if "enum" in schema and value not in schema["enum"]:
        raise Invalid(f"{where}: expected one of {', '.join(map(str, schema['enum']))}, got {value!r}", field=where)
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            raise Invalid(f"{where}: must be >= {schema['minimum']}, got {value}", field=where)
        if "maximum" in schema and value > schema["maximum"]:
            raise Invalid(f"{where}: must be <= {schema['maximum']}, got {value}", field=where)
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            raise Invalid(f"{where}: must be > {schema['exclusiveMinimum']}, got {value}", field=where)
    if isinstance(value, str):
        _unicode(value, where)
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise Invalid(f"{where}: must not be empty" if schema["minLength"] == 1
                          else f"{where}: at least {schema['minLength']} characters", field=where)
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise Invalid(f"{where}: at most {schema['maxLength']} characters, got {len(value)}", field=where)
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise Invalid(f"{where}: {value!r} does not match {schema['pattern']}", field=where)
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise Invalid(f"{where}: at most {schema['maxItems']} items, got {len(value)}", field=where)
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], f"{path}[{i}]" if path else f"[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        if extra is False:
            unknown = sorted(k for k in value if k not in props)
            if unknown:
                prefix = f"{path}." if path else ""
                raise Invalid(f"unknown field{'s' if len(unknown) > 1 else ''}: "
                              f"{', '.join(prefix + k for k in unknown)} (allowed: {', '.join(sorted(props))})",
                              fields=[prefix + k for k in unknown])
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            prefix = f"{path}." if path else ""
            raise Invalid(f"missing required field{'s' if len(missing) > 1 else ''}: "
                          f"{', '.join(prefix + k for k in missing)}", fields=[prefix + k for k in missing])
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            raise Invalid(f"{where}: give at least one of {', '.join(sorted(props))}", field=where)
        for k, v in value.items():
            _unicode(k, f"{path}.{k}" if path else k)
            sub = props.get(k) if k in props else (extra if isinstance(extra, dict) else None)
            if sub is not None:
                validate(v, sub, f"{path}.{k}" if path else k)

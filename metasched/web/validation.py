"""The request body's way in: JSON parsing that refuses what would fail later, and a small JSON Schema
subset validator. The request schemas published in /openapi.json are the ones the API enforces, so the
document and the behaviour cannot drift apart.

Every refusal is an Invalid (400) naming the field; nothing here raises anything else, so a hostile
body is never a 500 (and a refused request stores nothing: validation runs before the service is called).

- :func:`parse_body`: JSON text to Python values. NaN/Infinity, numbers that do not fit an integer or a
  float, and nesting deeper than the parser's recursion limit are refused, not crashed on.
- :func:`check_text`: every string of the body, at any depth, object keys included, must be valid
  Unicode text without NUL: a lone surrogate (a ``\\ud800`` escape) cannot be encoded as UTF-8 again
  (not in a response, not in a command line), and NUL cannot be part of an argv element or a path.
- :func:`validate`: the schema check. Supported keywords: type, enum, minimum, maximum,
  exclusiveMinimum, minLength, maxLength, pattern (with an optional ``x-pattern-error`` message), items,
  maxItems, properties, required, additionalProperties (false or a schema), propertyNames,
  minProperties, oneOf. As in
  JSON Schema, a number with a zero fraction (``1.0``) is an integer; it is returned as an int.
"""
from __future__ import annotations

import functools
import json
import math
import re

from ..errors import Invalid

# What no text field may contain: NUL, and lone surrogates (JSON can spell them, UTF-8 cannot).
BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
TEXT_RULE = "Unicode text without NUL characters or lone surrogates (\\ud800-\\udfff)"
MAX_INT_DIGITS = 20     # any integer the API takes fits in 19 digits (ids are 64-bit), plus a sign


def _describe(ch: str) -> str:
    return "a NUL character" if ch == "\x00" else f"a lone surrogate (U+{ord(ch):04X})"


def _refuse_constant(name: str):
    raise Invalid(f"body is not valid JSON: {name} is not a JSON number", field="body")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise Invalid(f"body: a number with {len(text.lstrip('-'))} digits is out of range (at most "
                      f"{MAX_INT_DIGITS} digits)", field="body")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Invalid(f"body: the number {text[:40]} is out of range", field="body")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_int=_parse_int, parse_float=_parse_float)


def parse_body(raw: bytes):
    """The JSON value of a request body; Invalid for anything that is not JSON the API could use."""
    try:
        # what json.loads does with bytes (UTF-8, -16 or -32), with one decoder made once
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        if text.startswith("\ufeff"):
            raise Invalid("body is not valid JSON: it starts with a byte order mark", field="body")
        return _DECODER.decode(text)
    except Invalid:
        raise
    except RecursionError:
        raise Invalid("body is not valid JSON: nested too deeply", field="body") from None
    except ValueError as exc:        # JSONDecodeError, UnicodeDecodeError (both ValueErrors)
        raise Invalid(f"body is not valid JSON: {exc}", field="body") from None


def check_text(value, path: str = "") -> None:
    """Invalid naming the first field whose text (or key) contains NUL or a lone surrogate."""
    stack = [(value, path)]
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            m = BAD_TEXT.search(v)
            if m:
                raise Invalid(f"{where or 'body'}: contains {_describe(m.group())} at character {m.start() + 1}; "
                              f"text must be {TEXT_RULE}", field=where or "body")
        elif isinstance(v, dict):
            for k in v:
                m = BAD_TEXT.search(k)
                if m:
                    raise Invalid(f"{where or 'body'}: a field name contains {_describe(m.group())}; "
                                  f"field names must be {TEXT_RULE}", field=where or "body")
            for k, x in reversed(list(v.items())):
                stack.append((x, f"{where}.{k}" if where else k))
        elif isinstance(v, list):
            for i in range(len(v) - 1, -1, -1):
                stack.append((v[i], f"{where}[{i}]"))


@functools.lru_cache(maxsize=None)
def _pattern(pattern: str) -> re.Pattern:
    """A schema pattern as JSON Schema reads it (ECMA-262): a final ``$`` is the end of the text. Python's
    ``$`` also matches before a final newline, which would let 'name\n' through '^[^\n]*$'."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _is_integer(v) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": _is_integer,
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


def validate(value, schema: dict, path: str = ""):
    """The value, checked against the schema (integral numbers in integer places as ints). Raises
    Invalid naming the field path and what was expected; unknown fields are named together."""
    where = path or "body"
    if "oneOf" in schema:
        same_type = None     # the error of the alternative whose type the value has: the one that says why
        for sub in schema["oneOf"]:
            st = sub.get("type")
            if st is not None and not any(_TYPES[x](value) for x in (st if isinstance(st, list) else [st])):
                continue            # cheaper than the Invalid it would raise (its error is made below if need be)
            try:
                return validate(value, sub, path)
            except Invalid as exc:
                if same_type is None and st is not None:
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
        if isinstance(value, float) and "integer" in types and value.is_integer():
            value = int(value)
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
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise Invalid(f"{where}: must not be empty" if schema["minLength"] == 1
                          else f"{where}: at least {schema['minLength']} characters", field=where)
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise Invalid(f"{where}: at most {schema['maxLength']} characters, got {len(value)}", field=where)
        if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            shown = value if len(value) <= 80 else value[:77] + "..."
            if "x-pattern-error" in schema:
                raise Invalid(f"{where}: {schema['x-pattern-error']}, got {shown!r}", field=where)
            raise Invalid(f"{where}: {shown!r} does not match {schema['pattern']}", field=where)
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise Invalid(f"{where}: at most {schema['maxItems']} items, got {len(value)}", field=where)
        if "items" in schema:
            value = [validate(item, schema["items"], f"{path}[{i}]" if path else f"[{i}]")
                     for i, item in enumerate(value)]
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
        if "propertyNames" in schema:
            for k in value:
                validate(k, schema["propertyNames"], f"{path}.{k}" if path else k)
        out = {}
        for k, v in value.items():
            sub = props.get(k) if k in props else (extra if isinstance(extra, dict) else None)
            out[k] = validate(v, sub, f"{path}.{k}" if path else k) if sub is not None else v
        value = out
    return value

"""A JSON instance for a JSON Schema, for ``response_format`` and tool-call arguments.

Covers what structured-output schemas use in practice (the subset OpenAI strict mode
accepts plus common extras): ``type`` (single or list), ``object`` / ``properties`` /
``required`` / ``minProperties``, ``array`` / ``items`` / ``prefixItems`` / ``minItems`` /
``maxItems`` / ``uniqueItems``, ``string`` with ``minLength`` / ``maxLength`` / ``format``
(date-time, date, time, email, uri, uuid, ipv4, hostname), ``number`` / ``integer`` with
``minimum`` / ``maximum`` / exclusive bounds / ``multipleOf``, ``boolean``, ``null``,
``enum``, ``const``, ``nullable``, ``anyOf`` / ``oneOf`` / ``allOf``, and local ``$ref``
(``#/$defs/...``, ``#/definitions/...``, as Pydantic emits). ``default`` and ``examples``
are returned as given when present. ``pattern`` is not honoured.
"""

from __future__ import annotations

import math
import random
import uuid
from typing import Any

from llmsim.text import VOCABULARY, phrase

JsonSchema = dict[str, Any] | bool

MAX_DEPTH = 8
"""Below this depth only required properties and minimum-size arrays are produced, so
recursive schemas (trees, linked lists) terminate."""


class SchemaError(ValueError):
    """The schema cannot be understood (e.g. a ``$ref`` that does not resolve)."""


def instance_for(schema: JsonSchema, rng: random.Random) -> Any:
    """A value that validates against ``schema``; the same ``rng`` state gives the same value."""
    return _Generator(schema, rng).generate(schema, 0)


class _Generator:
    def __init__(self, root: JsonSchema, rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def resolve(self, ref: str) -> JsonSchema:
        if not ref.startswith("#"):
            raise SchemaError(f"only local $ref is supported, got {ref!r}")
        node: Any = self.root
        for raw in ref[1:].split("/"):
            if not raw:
                continue
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise SchemaError(f"$ref {ref!r} does not resolve")
        if not isinstance(node, (dict, bool)):
            raise SchemaError(f"$ref {ref!r} does not point at a schema")
        return node

    def generate(self, schema: JsonSchema, depth: int) -> Any:
        if schema is True:
            return phrase(self.rng)
        if schema is False:
            raise SchemaError("the schema `false` has no instance")
        if not isinstance(schema, dict):
            raise SchemaError(f"a schema must be an object or a boolean, got {schema!r}")
        if depth > 64:
            raise SchemaError("schema nesting too deep (a $ref cycle without an exit?)")

        if "$ref" in schema:
            target = self.resolve(str(schema["$ref"]))
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            if siblings and isinstance(target, dict):
                target = _merge(target, siblings)
            return self.generate(target, depth + 1)

        if "const" in schema:
            return schema["const"]
        if "default" in schema:
            return schema["default"]
        examples = schema.get("examples")
        if isinstance(examples, list) and examples:
            return examples[0]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.rng.choice(enum)

        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = (
                    self.resolve(part["$ref"])
                    if isinstance(part, dict) and "$ref" in part
                    else part
                )
                if isinstance(part, dict):
                    merged = _merge(merged, part)
            return self.generate(merged, depth + 1)

        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                base = {k: v for k, v in schema.items() if k != key}
                chosen = self.pick_option(options, depth)
                if isinstance(chosen, dict) and base:
                    chosen = _merge(base, chosen)
                return self.generate(chosen, depth + 1)

        kind = self.pick_type(schema)
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, depth)
        if kind == "string":
            return self.string(schema)
        if kind == "integer":
            return self.integer(schema)
        if kind == "number":
            return self.number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        raise SchemaError(f"unsupported type {kind!r}")

    def pick_option(self, options: list[Any], depth: int) -> JsonSchema:
        def is_null(o: Any) -> bool:
            return isinstance(o, dict) and o.get("type") == "null"

        non_null = [o for o in options if not is_null(o)] or options
        if depth >= MAX_DEPTH and len(non_null) < len(options):
            # Deep in a recursive schema: take the null branch so the instance ends.
            return {"type": "null"}
        choice = self.rng.choice(non_null)
        if not isinstance(choice, (dict, bool)):
            raise SchemaError(f"anyOf/oneOf options must be schemas, got {choice!r}")
        return choice

    def pick_type(self, schema: dict[str, Any]) -> str:
        declared = schema.get("type")
        if isinstance(declared, list):
            real = [t for t in declared if t != "null"]
            return str(real[0]) if real else "null"
        if isinstance(declared, str):
            return declared
        if "properties" in schema or "required" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        if any(k in schema for k in ("minimum", "maximum", "multipleOf")):
            return "number"
        return "string"

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if depth >= MAX_DEPTH and name not in required:
                continue
            out[name] = self.generate(sub, depth + 1)
        for name in required - out.keys():
            # Required but undeclared: anything goes unless additionalProperties says otherwise.
            extra = schema.get("additionalProperties", True)
            out[name] = self.generate(extra if isinstance(extra, dict) else True, depth + 1)
        min_props = int(schema.get("minProperties", 0))
        extra_schema = schema.get("additionalProperties", True)
        i = 0
        while len(out) < min_props and extra_schema is not False:
            out[f"extra_{i}"] = self.generate(
                extra_schema if isinstance(extra_schema, dict) else True, depth + 1
            )
            i += 1
        return out

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items", True)
        lo = int(schema.get("minItems", 0))
        hi = schema.get("maxItems")
        if isinstance(prefix, list):
            lo = max(lo, len(prefix))
        if depth >= MAX_DEPTH:
            count = lo
        else:
            upper = lo + 3 if hi is None else min(int(hi), lo + 3)
            count = self.rng.randint(max(lo, 1 if upper >= 1 else 0), max(upper, lo))
        if hi is not None:
            count = min(count, int(hi))

        out: list[Any] = []
        unique = bool(schema.get("uniqueItems"))
        attempts = 0
        while len(out) < count and attempts < count * 10 + 10:
            attempts += 1
            idx = len(out)
            sub = prefix[idx] if isinstance(prefix, list) and idx < len(prefix) else items
            if sub is False:
                break
            value = self.generate(sub, depth + 1)
            if unique and value in out:
                continue
            out.append(value)
        return out

    def string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        rng = self.rng
        if fmt == "date-time":
            value = (
                f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
                f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
            )
        elif fmt == "date":
            value = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif fmt == "time":
            value = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
        elif fmt == "email":
            value = f"{rng.choice(VOCABULARY)}.{rng.choice(VOCABULARY)}@example.com"
        elif fmt in ("uri", "url", "uri-reference", "iri"):
            value = f"https://example.com/{rng.choice(VOCABULARY)}/{rng.randint(1, 999)}"
        elif fmt == "uuid":
            value = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        elif fmt == "ipv4":
            value = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        elif fmt == "hostname":
            value = f"{rng.choice(VOCABULARY)}.example.com"
        else:
            value = phrase(rng)
        lo = int(schema.get("minLength", 0))
        hi = schema.get("maxLength")
        while len(value) < lo:
            value += " " + rng.choice(VOCABULARY)
        if len(value) < lo:
            value += "x" * (lo - len(value))
        if hi is not None and len(value) > int(hi):
            value = value[: int(hi)].rstrip() or value[: int(hi)]
            if len(value) < lo:
                value = value + "x" * (lo - len(value))
        return value

    def bounds(
        self, schema: dict[str, Any], default_lo: float, default_hi: float
    ) -> tuple[float, float, bool, bool]:
        lo, lo_excl = default_lo, False
        hi, hi_excl = default_hi, False
        if "minimum" in schema:
            lo = float(schema["minimum"])
        if "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
            lo, lo_excl = float(schema["exclusiveMinimum"]), True
        elif schema.get("exclusiveMinimum") is True:
            lo_excl = True
        if "maximum" in schema:
            hi = float(schema["maximum"])
        if "exclusiveMaximum" in schema and not isinstance(schema["exclusiveMaximum"], bool):
            hi, hi_excl = float(schema["exclusiveMaximum"]), True
        elif schema.get("exclusiveMaximum") is True:
            hi_excl = True
        if "minimum" not in schema and "exclusiveMinimum" not in schema and hi < lo:
            lo = hi - (default_hi - default_lo)
        if "maximum" not in schema and "exclusiveMaximum" not in schema and hi < lo:
            hi = lo + (default_hi - default_lo)
        return lo, hi, lo_excl, hi_excl

    def integer(self, schema: dict[str, Any]) -> int:
        lo_f, hi_f, lo_excl, hi_excl = self.bounds(schema, 0, 100)
        lo = math.floor(lo_f) + 1 if lo_excl and lo_f == math.floor(lo_f) else math.ceil(lo_f)
        hi = math.ceil(hi_f) - 1 if hi_excl and hi_f == math.ceil(hi_f) else math.floor(hi_f)
        if hi < lo:
            raise SchemaError(f"integer bounds admit no value: {schema}")
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first = math.ceil(lo / step)
            last = math.floor(hi / step)
            if last < first:
                raise SchemaError(f"no multiple of {step} within bounds: {schema}")
            return self.rng.randint(first, last) * step
        return self.rng.randint(lo, hi)

    def number(self, schema: dict[str, Any]) -> float:
        lo, hi, lo_excl, hi_excl = self.bounds(schema, 0.0, 100.0)
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            first = math.ceil(lo / step) + (1 if lo_excl and (lo / step).is_integer() else 0)
            last = math.floor(hi / step) - (1 if hi_excl and (hi / step).is_integer() else 0)
            if last < first:
                raise SchemaError(f"no multiple of {step} within bounds: {schema}")
            decimals = len(repr(float(step)).split(".")[1]) if "." in repr(float(step)) else 0
            for _ in range(20):
                k = self.rng.randint(first, last)
                value = round(k * step, decimals)
                # Float steps: keep a value whose quotient is exactly integral, as validators
                # check `value / step` in floating point.
                if isinstance(step, int) or (value / step).is_integer():
                    return float(value)
            return float(first * step)
        for _ in range(20):
            value = round(self.rng.uniform(lo, hi), 2)
            if (
                lo <= value <= hi
                and not (lo_excl and value == lo)
                and not (hi_excl and value == hi)
            ):
                return value
        return (lo + hi) / 2


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Shallow schema merge for allOf / $ref siblings: properties and required combine."""
    out = dict(a)
    for key, value in b.items():
        if key == "properties" and isinstance(out.get("properties"), dict):
            out["properties"] = {**out["properties"], **value}
        elif key == "required" and isinstance(out.get("required"), list):
            out["required"] = sorted({*out["required"], *value})
        else:
            out[key] = value
    return out

"""JSON Schemas that clients send (a response_format's schema, a tool's parameters), checked
before an engine sees them: an unknown type, a keyword of the wrong shape, a pattern that is no
regular expression (the metaschema's check) or a $ref that points nowhere is the client's error (400 naming the field),
not an engine failure found halfway through building a grammar."""

from __future__ import annotations

from typing import Any, Iterator

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for


def check_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or ValueError saying what is wrong with it (for a pydantic field validator)."""
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "(top)"
        raise ValueError(f"not a valid JSON Schema at {where}: {error.message}") from None
    for where, reference in _references(schema):
        if not isinstance(reference, str) or not reference.startswith("#") or _resolve(schema, reference) is None:
            raise ValueError(f"not a valid JSON Schema at {where}: $ref {reference!r} does not resolve within the schema "
                             "(only local references such as '#/$defs/Name' are followed)")
    return schema


def _references(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every $ref in the schema, at any depth (inside properties, $defs, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}/{key}" if path else key
            if key == "$ref":
                yield here, value
            yield from _references(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _references(value, f"{path}/{index}")


def _resolve(schema: dict[str, Any], reference: str) -> Any:
    """The part of `schema` a local JSON Pointer reference names, or None."""
    node: Any = schema
    for part in reference.lstrip("#").split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node

"""Check objects against the generated CRD the way the API server does, without an API server.

OpenAPI v3 (structural) is JSON schema draft 4 plus `nullable` and the `x-kubernetes-*`
extensions. Here: defaults are applied first (as the API server does before validating),
unknown fields are refused where the schema does not preserve them (kubectl's strict field
validation), the schema is checked with jsonschema, and every `x-kubernetes-validations` rule is
evaluated with a CEL interpreter (cel-python) extended with the Kubernetes CEL functions the CRD
uses. The real API server gets the same examples in tests/integration.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
from celpy import celtypes

from trainguard.api.crdgen import apply_defaults


def _is_cidr(value: Any) -> celtypes.BoolType:
    text = str(value)
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType("/" in text)


def _cidr(value: Any) -> celtypes.StringType:
    """Kubernetes' `cidr(string)`; its value is kept as the text (only `containsCIDR` is used on it)."""
    return celtypes.StringType(str(value))


def _contains_cidr(outer: Any, inner: Any) -> celtypes.BoolType:
    """Kubernetes' `cidr(a).containsCIDR(b)`: b lies inside a (same IP family)."""
    a, b = ipaddress.ip_network(str(outer), strict=False), ipaddress.ip_network(str(inner), strict=False)
    return celtypes.BoolType(a.version == b.version and b.subnet_of(a))  # type: ignore[arg-type]


_CEL = celpy.Environment()
_FUNCTIONS = {"isCIDR": _is_cidr, "cidr": _cidr, "containsCIDR": _contains_cidr}


def to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """Rewrite an OpenAPI v3 structural schema node as draft-4 JSON schema."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in node:
        out["properties"] = {k: to_jsonschema(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_jsonschema(node["additionalProperties"])
    if "items" in node:
        out["items"] = to_jsonschema(node["items"])
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True  # the API server refuses a duplicate in a set list
    return out


def _cel_nodes(schema: dict[str, Any], obj: Any, path: str) -> Iterator[tuple[dict[str, Any], Any, str]]:
    yield schema, obj, path
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in obj and obj[name] is not None:
                yield from _cel_nodes(sub, obj[name], f"{path}.{name}" if path else name)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for k, v in obj.items():
                yield from _cel_nodes(extra, v, f"{path}[{k}]")
    elif isinstance(obj, list) and "items" in schema:
        for i, v in enumerate(obj):
            yield from _cel_nodes(schema["items"], v, f"{path}[{i}]")


def cel_errors(schema: dict[str, Any], obj: Any) -> list[str]:
    """Evaluate every x-kubernetes-validations rule where it applies; 'path: message' per failure."""
    errors = []
    for node, value, path in _cel_nodes(schema, obj, ""):
        for rule in node.get("x-kubernetes-validations", []):
            program = _CEL.program(_CEL.compile(rule["rule"]), functions=_FUNCTIONS)
            result = program.evaluate({"self": celpy.json_to_cel(value)})
            if result is not True and not (isinstance(result, celtypes.BoolType) and bool(result)):
                errors.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
    return errors


def validate(openapi: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Problems the API server would report for obj, 'path: message' each; empty when valid."""
    obj = apply_defaults(openapi, copy.deepcopy(obj))
    validator = jsonschema.Draft4Validator(to_jsonschema(openapi))
    problems = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]
    return problems or cel_errors(openapi, obj)

"""Writ's Cedar schema: the entities, the action and the context a policy may speak of.

A bundle is validated against it before it is published, so a misspelled attribute or an
unguarded access to an argument some tools do not take is refused at `writ policy load`, naming the
policy, instead of loading and silently never applying. The arguments' types come from the input
schemas of the tools in the catalog; an argument is optional (policies test it with `has`) unless
every tool requires it. Pure: no I/O.

    entity Team;
    entity Agent in [Team] { owner: String };
    entity Tool { server: String, name: String, read_only: Bool, destructive: Bool,
                  idempotent: Bool, open_world: Bool };
    action call_tool appliesTo { principal: Agent, resource: Tool,
                                 context: { arguments: {...from the catalog...}, on_behalf_of: String } };
    entity Resource { ...Tool's attributes, uri: String };   // name is the URI too
    entity Prompt { ...Tool's attributes };
    action read_resource, subscribe_resource, unsubscribe_resource appliesTo { principal: Agent,
                                 resource: Resource, context: (as call_tool's; arguments empty) };
    action get_prompt appliesTo { principal: Agent, resource: Prompt, context: (as call_tool's) };
    action complete appliesTo { principal: Agent, resource: [Prompt, Resource], context: (as call_tool's) };
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import cedarpy

from writ_common import events as ev
from writ_common import operations

_SIMPLE = {"integer": "Long", "number": "Long", "string": "String", "boolean": "Boolean"}


def _cedar_type(schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Cedar type of a JSON Schema, where Cedar has one (None: no usable type)."""
    kind = schema.get("type")
    for union in ("anyOf", "oneOf"):
        # `str | None` and the like: the one non-null branch is the type (null is never sent to Cedar).
        branches = [b for b in schema.get(union) or [] if isinstance(b, Mapping) and b.get("type") != "null"]
        if len(branches) == 1:
            return _cedar_type(branches[0])
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if isinstance(kind, str) and kind in _SIMPLE:
        return {"type": _SIMPLE[kind]}
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        element = _cedar_type(schema["items"])
        return {"type": "Set", "element": element} if element else None
    return None


def argument_types(tools: Iterable[ev.ToolDefinition]) -> dict[str, dict[str, Any]]:
    """One Cedar attribute per argument name across the catalog. A name typed differently by two
    tools has no single type and is left out (a policy naming it is refused, with the reason)."""
    seen: dict[str, dict[str, Any] | None] = {}
    required_by: dict[str, int] = {}
    count = 0
    for tool in tools:
        count += 1
        properties = tool.input_schema.get("properties") or {}
        required = set(tool.input_schema.get("required") or [])
        for name, spec in properties.items():
            typed = _cedar_type(spec) if isinstance(spec, Mapping) else None
            if name in seen and seen[name] != typed:
                typed = None
            seen[name] = typed
            required_by[name] = required_by.get(name, 0) + (name in required)
    return {
        name: {**typed, "required": required_by[name] == count} for name, typed in seen.items() if typed is not None
    }


def cedar_schema(tools: Iterable[ev.ToolDefinition]) -> dict[str, Any]:
    """The schema in Cedar's JSON form, for the tools the catalog holds now.

    Every action's resource has the Tool's attributes and every action's context the same shape, so
    a policy that does not name its action (``forbid(principal, action, resource) when {
    resource.destructive }``) still validates, and applies to every operation."""
    boolean = {"type": "Boolean"}
    string = {"type": "String"}
    target = {
        "server": string,
        "name": string,
        "read_only": boolean,
        "destructive": boolean,
        "idempotent": boolean,
        "open_world": boolean,
    }
    context = {
        "type": "Record",
        "attributes": {
            "arguments": {"type": "Record", "attributes": argument_types(tools)},
            "on_behalf_of": string,
        },
    }

    def applies_to(*resources: str) -> dict[str, Any]:
        return {"appliesTo": {"principalTypes": ["Agent"], "resourceTypes": list(resources), "context": context}}

    return {
        "": {
            "entityTypes": {
                "Team": {},
                "Agent": {"memberOfTypes": ["Team"], "shape": {"type": "Record", "attributes": {"owner": string}}},
                "Tool": {"shape": {"type": "Record", "attributes": target}},
                "Resource": {"shape": {"type": "Record", "attributes": {**target, "uri": string}}},
                "Prompt": {"shape": {"type": "Record", "attributes": target}},
            },
            "actions": {
                "call_tool": applies_to("Tool"),
                **{
                    name: applies_to("Prompt", "Resource") if name == "complete" else applies_to(op.entity)
                    for name, op in operations.OPERATIONS.items()
                },
            },
        }
    }


def validation_errors(cedar: str, names: Mapping[str, str], schema: Mapping[str, Any]) -> list[str]:
    """What is wrong with the bundle against the schema, one sentence per error naming the
    policy by its @id; empty when it validates."""
    result = cedarpy.validate_policies(cedar, dict(schema))
    if result.validation_passed:
        return []
    errors = []
    for error in result.errors:
        policy = names.get(error.policy_id, error.policy_id)
        text = str(error.error).replace(f"for policy `{error.policy_id}`, ", "")
        if "optional attribute" in text:
            text += " (test it first: `context.arguments has NAME && ...`)"
        errors.append(f"policy {policy!r}: {text}")
    return errors

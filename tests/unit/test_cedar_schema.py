"""Writ's Cedar schema: argument types from the catalog's input schemas, validation errors by @id."""

from __future__ import annotations

import pytest

from writ_common import events as ev
from writ_policy.schema import argument_types, cedar_schema, validation_errors

pytestmark = pytest.mark.unit


def tool(name: str, properties: dict[str, object], required: list[str]) -> ev.ToolDefinition:
    schema = {"type": "object", "properties": properties, "required": required}
    return ev.ToolDefinition(name=name, input_schema=schema, annotations=ev.ToolAnnotations(), tool_digest=name)


def test_argument_types_come_from_the_catalog_and_conflicts_are_left_out() -> None:
    types = argument_types(
        [
            tool(
                "pay",
                {
                    "amount": {"type": "integer"},
                    "to": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                ["amount", "to"],
            ),
            tool("ask", {"to": {"type": "string"}, "amount": {"type": "integer"}}, ["to", "amount"]),
            tool("odd", {"to": {"type": "integer"}}, []),
        ]
    )
    assert types["amount"] == {"type": "Long", "required": False}  # "odd" does not take it
    assert types["tags"] == {"type": "Set", "element": {"type": "String"}, "required": False}
    assert "to" not in types
    nullable = argument_types([tool("t", {"token": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, [])])
    assert nullable["token"] == {"type": "String", "required": False}  # a string here, an integer there: no single type
    schema = cedar_schema([tool("pay", {"amount": {"type": "integer"}}, ["amount"])])
    assert (
        validation_errors(
            '@id("p") forbid(principal, action, resource) when { context.arguments.amount > 1 };',
            {"policy0": "p"},
            schema,
        )
        == []
    )

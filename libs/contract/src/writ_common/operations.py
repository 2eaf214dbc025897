"""The MCP operations an intent may ask for, beyond calling a tool: what each one targets, what
its arguments must be, its Cedar action and resource, and the MCP request the executor sends. Pure.

An intent names its operation (``IntentSubmitted.operation``; ``call_tool`` when absent) and its
target as ``SERVER/TARGET`` in ``tool``: the tool's name for ``call_tool``, the resource's URI for
``read_resource`` / ``subscribe_resource`` / ``unsubscribe_resource``, the prompt's name for
``get_prompt``, and for ``complete`` the prompt's name or the resource template's URI whose
argument is completed. Listings, ping and logging/setLevel are not operations: the gateway
answers them without an intent (docs/gateway.md says why).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from writ_common.errors import Refusal

CALL_TOOL = "call_tool"
MAX_TARGET_LENGTH = 2048
PROMPT_REF = "ref/prompt"
RESOURCE_REF = "ref/resource"


@dataclass(frozen=True, slots=True)
class Operation:
    """One governed MCP operation other than tools/call."""

    name: str  # the Cedar action, and IntentSubmitted.operation
    method: str  # the MCP request the executor sends
    entity: str  # the Cedar resource type of its target ("" for complete: by its ref)
    read_only: bool  # whether it changes nothing upstream (the intent's annotations say so)


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("read_resource", "resources/read", "Resource", read_only=True),
        Operation("subscribe_resource", "resources/subscribe", "Resource", read_only=False),
        Operation("unsubscribe_resource", "resources/unsubscribe", "Resource", read_only=False),
        Operation("get_prompt", "prompts/get", "Prompt", read_only=True),
        Operation("complete", "completion/complete", "", read_only=True),
    )
}
ACTIONS = (CALL_TOOL, *OPERATIONS)


def split_target(tool: str) -> tuple[str, str]:
    """``SERVER/TARGET`` -> (server, target); a URI target keeps its own slashes."""
    server, _, target = tool.partition("/")
    return server, target


def entity_of(operation: str, arguments: Mapping[str, Any]) -> str:
    """The Cedar resource type an operation's target is: Resource or Prompt (``complete`` by its ref)."""
    if operation == "complete":
        return "Prompt" if arguments.get("ref_type") == PROMPT_REF else "Resource"
    return OPERATIONS[operation].entity


def problem(operation: str, target: str, arguments: Mapping[str, Any]) -> Refusal | None:
    """Why an intent for ``operation`` on ``target`` with ``arguments`` cannot be planned; None
    when it can."""
    if operation not in OPERATIONS:
        return Refusal(
            code="unknown_operation",
            reason=f"{operation!r} is not an operation Writ governs (one of {', '.join(ACTIONS)})",
        )
    if not target or len(target) > MAX_TARGET_LENGTH:
        return Refusal(
            code="invalid_target",
            reason=f"{operation} needs a target of 1 to {MAX_TARGET_LENGTH} characters after SERVER/",
        )
    if operation in ("read_resource", "subscribe_resource", "unsubscribe_resource"):
        if arguments:
            return Refusal(code="invalid_arguments", reason=f"{operation} takes no arguments (the URI is its target)")
        return None
    if operation == "get_prompt":
        extra = set(arguments) - {"arguments"}
        given = arguments.get("arguments", {})
        if extra or not _strings(given):
            return Refusal(
                code="invalid_arguments", reason="get_prompt takes {'arguments': {name: string value}} and nothing else"
            )
        return None
    return _completion_problem(arguments)


def _completion_problem(arguments: Mapping[str, Any]) -> Refusal | None:
    extra = set(arguments) - {"ref_type", "argument", "context"}
    argument = arguments.get("argument")
    context = arguments.get("context", {})
    if (
        extra
        or arguments.get("ref_type") not in (PROMPT_REF, RESOURCE_REF)
        or not isinstance(argument, dict)
        or set(argument) != {"name", "value"}
        or not _strings(argument)
        or not isinstance(context, dict)
        or set(context) - {"arguments"}
        or not _strings(context.get("arguments", {}))
    ):
        return Refusal(
            code="invalid_arguments",
            reason="complete takes {'ref_type': 'ref/prompt' or 'ref/resource', 'argument': {'name':"
            " string, 'value': string}, 'context': {'arguments': {name: string}} (optional)}",
        )
    return None


def _strings(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def request_params(operation: str, target: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The MCP request's params (without ``_meta``) for a planned operation."""
    if operation == "get_prompt":
        return {"name": target, **({"arguments": arguments["arguments"]} if arguments.get("arguments") else {})}
    if operation == "complete":
        key = "name" if arguments["ref_type"] == PROMPT_REF else "uri"
        params: dict[str, Any] = {
            "ref": {"type": arguments["ref_type"], key: target},
            "argument": arguments["argument"],
        }
        if arguments.get("context"):
            params["context"] = arguments["context"]
        return params
    return {"uri": target}

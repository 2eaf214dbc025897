"""RFC 8785 canonical JSON and the sha256 digests that bind what runs to what was decided."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` as RFC 8785 (JCS) canonical JSON bytes."""
    return rfc8785.dumps(value)


def sha256_digest(value: Any) -> str:
    """Return ``sha256:<hex>`` of the canonical JSON of ``value``."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def args_digest(arguments: dict[str, Any]) -> str:
    """Digest of a tool call's arguments."""
    return sha256_digest(arguments)


def tool_digest(
    *,
    name: str,
    description: str | None,
    input_schema: dict[str, Any],
    output_schema: dict[str, Any] | None,
    annotations: dict[str, Any] | None,
) -> str:
    """Digest of a tool definition as discovered over MCP: this is the tool's version."""
    return sha256_digest(
        {
            "name": name,
            "description": description,
            "input_schema": input_schema,
            "output_schema": output_schema,
            "annotations": annotations,
        }
    )


def policy_digest(policy_text: str) -> str:
    """Digest of a Cedar policy bundle."""
    return sha256_digest({"cedar": policy_text})


def approval_digest(
    *,
    intent_id: str,
    agent_id: str,
    on_behalf_of: str | None,
    tool_digest: str,
    args_digest: str,
    policy_digest: str,
    deadline: str | None,
) -> str:
    """Digest an approver signs: exactly this call, under exactly this policy."""
    return sha256_digest(
        {
            "intent_id": intent_id,
            "agent_id": agent_id,
            "on_behalf_of": on_behalf_of,
            "tool_digest": tool_digest,
            "args_digest": args_digest,
            "policy_digest": policy_digest,
            "deadline": deadline,
        }
    )

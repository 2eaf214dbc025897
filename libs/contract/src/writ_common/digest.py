"""RFC 8785 canonical JSON and the sha256 digests that bind what runs to what was decided."""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any

import msgspec
import rfc8785

SAFE_INTEGER = 2**53 - 1

# msgspec's JSON with sorted keys is byte for byte JCS on the values `_plainly_canonical` admits:
# both write every code point of a string alike (tested over all of them), integers alike, and
# ASCII keys sort alike. Floats (JCS writes numbers as ECMAScript does) and anything else go to
# rfc8785, the reference. A receipt's hash took 67 us there and takes 10 here.
_SORTED_JSON = msgspec.json.Encoder(order="sorted")


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` as RFC 8785 (JCS) canonical JSON bytes.

    Raises:
        ValueError: the value is outside what JCS can represent (integers beyond ±2**53 - 1,
            non-finite floats, non-string keys).
    """
    if _plainly_canonical(value):
        try:
            return _SORTED_JSON.encode(value)
        except UnicodeEncodeError:
            pass  # a lone surrogate: rfc8785 refuses it with its own error
    return rfc8785.dumps(value)


def _plainly_canonical(value: Any) -> bool:
    """Only str, int within ±2**53 - 1, bool, None, and lists, tuples and dicts (ASCII keys) of them."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-SAFE_INTEGER <= value <= SAFE_INTEGER)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or not _plainly_canonical(item):
                return False
        return True
    if kind is list or kind is tuple:
        return all(map(_plainly_canonical, value))
    return False


def within_canonical_domain(value: Any) -> Any:
    """``value`` with what JCS cannot represent made representable: integers beyond ±2**53 - 1
    become their decimal strings, non-finite floats become strings. Used on tool output, which
    Writ records and signs but does not control."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -SAFE_INTEGER <= value <= SAFE_INTEGER else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): within_canonical_domain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [within_canonical_domain(v) for v in value]
    return str(value)


def sha256_digest(value: Any) -> str:
    """Return ``sha256:<hex>`` of the canonical JSON of ``value``."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


ARGS_DIGEST_PREFIX = "hmac-sha256:"
MIN_ARGS_KEY_BYTES = 32


def args_digest(arguments: dict[str, Any], *, key: bytes) -> str:
    """Digest of a tool call's arguments, keyed with the plane secret: HMAC-SHA256 over their
    canonical JSON, ``hmac-sha256:<hex>``. Keyed, so a low-entropy argument (a PIN, an amount)
    cannot be found by hashing every candidate; equal arguments still give equal digests.

    Raises:
        ValueError: ``key`` is shorter than 32 bytes, or the arguments are outside JCS.
    """
    if len(key) < MIN_ARGS_KEY_BYTES:
        raise ValueError(f"the args digest key must be at least {MIN_ARGS_KEY_BYTES} bytes")
    return ARGS_DIGEST_PREFIX + hmac.new(key, canonical_json(arguments), hashlib.sha256).hexdigest()


def tool_digest(
    *,
    name: str,
    description: str | None,
    input_schema: dict[str, Any],
    output_schema: dict[str, Any] | None,
    annotations: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Digest of a tool definition as discovered over MCP: this is the tool's version.

    ``extra``: every other member of the tool as the server listed it (``title``, ``icons``,
    ``_meta``, ``execution``...), so a server cannot change those unseen either. It is digested only
    when there is some, under its own key: a tool with nothing beyond the first five members keeps
    the digest it had before ``extra`` existed; one with a title (say) gets a new digest once, at its
    next discovery, and waits in quarantine like any changed tool.
    """
    body: dict[str, Any] = {
        "name": name,
        "description": description,
        "input_schema": input_schema,
        "output_schema": output_schema,
        "annotations": annotations,
    }
    if extra:
        body["extra"] = extra
    return sha256_digest(body)


def policy_digest(policy_text: str) -> str:
    """Digest of a Cedar policy bundle."""
    return sha256_digest({"cedar": policy_text})


def approval_digest(
    *,
    intent_id: str,
    agent_id: str,
    on_behalf_of: str | None,
    server: str,
    tool: str,
    tool_digest: str,
    args_digest: str,
    policy_digest: str,
    approval_group: str,
    quorum: int,
    owner_may_approve: bool,
    expires_at: str,
    deadline: str | None,
) -> str:
    """Digest an approver signs: exactly this call, under exactly this policy, decided by exactly
    this group and quorum until this expiry. Everything policy decided on is in it, so the
    executor, recomputing it from the history, runs only what was approved as it was asked."""
    return sha256_digest(
        {
            "intent_id": intent_id,
            "agent_id": agent_id,
            "on_behalf_of": on_behalf_of,
            "server": server,
            "tool": tool,
            "tool_digest": tool_digest,
            "args_digest": args_digest,
            "policy_digest": policy_digest,
            "approval_group": approval_group,
            "quorum": quorum,
            "owner_may_approve": owner_may_approve,
            "expires_at": expires_at,
            "deadline": deadline,
        }
    )

"""Identifiers: event ids, derived intent ids and the token rule for subject-safe ids."""

from __future__ import annotations

import base64
import hashlib
import re

from ulid import ULID

# The one rule for every name that becomes a NATS subject token or bus config: agent, approver,
# server, secret and intent ids, approval group names. No dots, wildcards or whitespace.
TOKEN_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
TOKEN_RULE = "[a-z0-9][a-z0-9_-]{0,62}"


def new_event_id() -> str:
    """Return a new, time-ordered event id (ULID)."""
    return str(ULID())


def is_token(value: str) -> bool:
    """True when ``value`` may be used as one NATS subject token (lowercase id)."""
    return bool(TOKEN_RE.fullmatch(value))


def check_token(value: str, what: str) -> str:
    """``value`` if it may be one subject token.

    Raises:
        ValueError: it may not, saying which name and what it must look like.
    """
    if not is_token(value):
        raise ValueError(f"{what} {value!r} must match {TOKEN_RULE}")
    return value


def derive_intent_id(agent_id: str, idempotency_key: str) -> str:
    """Derive the intent id from ``(agent_id, idempotency_key)``.

    The same key from the same agent always names the same intent, so a resubmission,
    however late, lands on the original intent instead of creating a second one.
    """
    digest = hashlib.sha256(f"{agent_id}\x00{idempotency_key}".encode()).digest()
    return "in-" + base64.b32encode(digest[:15]).decode().lower()

"""Identity's rules: who is this agent, and did it really sign this intent? Pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from writ_common import events as ev
from writ_common.digest import canonical_json
from writ_common.envelope import StoredEvent, parse_time
from writ_common.fold import IntentView
from writ_common.ids import derive_intent_id
from writ_common.signing import SignatureInvalid, key_id, verify


@dataclass(frozen=True, slots=True)
class Agent:
    agent_id: str
    public_key: str
    key_id: str
    owner: str
    teams: tuple[str, ...]
    acts_for: tuple[str, ...]
    previous_public_key: str | None = None
    previous_valid_until: datetime | None = None
    revoked_at: datetime | None = None
    bus_key: str | None = None


def apply_identity_event(agents: dict[str, Agent], event: StoredEvent) -> None:
    """Fold one identity control event into the agents view."""
    match event.payload:
        case ev.AgentRegistered() as p:
            agents[p.agent_id] = Agent(
                agent_id=p.agent_id,
                public_key=p.public_key,
                key_id=key_id(p.public_key),
                owner=p.owner,
                teams=tuple(p.teams),
                acts_for=tuple(p.acts_for),
                bus_key=p.bus_key,
            )
        case ev.AgentKeyRotated() as p if p.agent_id in agents:
            agents[p.agent_id] = replace(
                agents[p.agent_id],
                public_key=p.public_key,
                key_id=key_id(p.public_key),
                previous_public_key=p.previous_public_key,
                previous_valid_until=parse_time(p.previous_valid_until),
            )
        case ev.AgentRevoked() as p if p.agent_id in agents:
            agents[p.agent_id] = replace(agents[p.agent_id], revoked_at=parse_time(p.revoked_at))
        case _:
            pass


def check_intent(
    view: IntentView, agent: Agent | None, *, now: datetime, clock_skew: timedelta
) -> ev.IntentRejected | None:
    """Everything identity can decide without I/O; None means the intent is authentic so far."""
    intent = view.submitted
    assert intent is not None and view.agent_id and view.intent_id

    def reject(code: str, reason: str) -> ev.IntentRejected:
        return ev.IntentRejected(stage="authenticate", code=code, reason=f"{code}: {reason}")

    if intent.agent_id != view.agent_id:
        return reject(
            "agent_mismatch", f"intent signed for agent {intent.agent_id!r} was published as {view.agent_id!r}"
        )
    if derive_intent_id(intent.agent_id, intent.idempotency_key) != view.intent_id:
        return reject("intent_id_mismatch", "intent id is not derived from (agent_id, idempotency_key)")
    if agent is None:
        return reject("unknown_agent", f"no agent {intent.agent_id!r} is registered")
    try:
        signed = canonical_json(intent.signed_fields())
    except ValueError as exc:
        return reject("unsignable_intent", f"the intent cannot be put in canonical form to check its signature ({exc})")
    try:
        issued = parse_time(intent.issued_at)
    except ValueError:
        return reject("bad_issued_at", f"issued_at {intent.issued_at!r} is not an RFC 3339 time")
    if not verifies(agent.public_key, signed, intent.signature):
        old_key = agent.previous_public_key
        if not old_key or not verifies(old_key, signed, intent.signature):
            return reject("bad_signature", f"intent signed by a key not registered for agent {agent.agent_id!r}")
        if agent.previous_valid_until is None or issued > agent.previous_valid_until:
            return reject(
                "key_rotated",
                f"intent signed with agent {agent.agent_id!r}'s previous key, valid only for intents issued"
                f" until {agent.previous_valid_until}",
            )
    if agent.revoked_at is not None and issued >= agent.revoked_at:
        return reject("agent_revoked", f"agent {agent.agent_id!r} was revoked at {agent.revoked_at.isoformat()}")
    if abs(now - issued) > clock_skew:
        return reject(
            "stale_intent",
            f"issued_at {intent.issued_at} is outside the {clock_skew.total_seconds():g}s freshness window",
        )
    if intent.on_behalf_of and intent.on_behalf_of not in agent.acts_for and "*" not in agent.acts_for:
        return reject("delegation_refused", f"agent {agent.agent_id!r} may not act for {intent.on_behalf_of!r}")
    return None


def verifies(public_key: str, message: bytes, signature: str) -> bool:
    try:
        verify(public_key, message, signature)
    except SignatureInvalid:
        return False
    return True


def authenticated(agent: Agent) -> ev.IntentAuthenticated:
    return ev.IntentAuthenticated(key_id=agent.key_id, owner=agent.owner, teams=list(agent.teams))


def bus_revocations(agents: Mapping[str, Agent]) -> dict[str, int]:
    """The Writ account's revocations: each revoked agent's bus key -> when (unix seconds). The
    cluster refuses every user JWT of that key issued at or before then, and drops its connections."""
    return {a.bus_key: int(a.revoked_at.timestamp()) for a in agents.values() if a.bus_key and a.revoked_at is not None}

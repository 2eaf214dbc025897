"""Identity's rules: who is this agent, and did it really sign this intent? Pure functions."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from writ_common import events as ev
from writ_common import subjects
from writ_common.digest import canonical_json
from writ_common.envelope import StoredEvent, parse_time
from writ_common.errors import Refusal
from writ_common.fold import IntentView
from writ_common.ids import TOKEN_RULE, derive_intent_id, is_token
from writ_common.signing import SignatureInvalid, key_id, unb64, verify

TOKEN_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


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
    suspension: ev.AgentSuspended | None = None  # suspended at the bus now (ingress budget), until reinstated
    suspensions: int = 0  # how many times, ever: names the next suspension's message id
    bus_refused_at: datetime | None = None  # the latest suspension: the bus refuses its JWTs issued until then

    @property
    def status(self) -> str:
        return "revoked" if self.revoked_at else "suspended" if self.suspension else "active"


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
        case ev.AgentSuspended() as p if p.agent_id in agents:
            agent, at = agents[p.agent_id], parse_time(p.suspended_at)
            refused = max(at, agent.bus_refused_at) if agent.bus_refused_at else at
            agents[p.agent_id] = replace(agent, suspension=p, suspensions=agent.suspensions + 1, bus_refused_at=refused)
        case ev.AgentReinstated() as p if p.agent_id in agents:
            agent = agents[p.agent_id]
            if agent.suspension is not None and agent.suspension.suspended_at == p.suspended_at:
                agents[p.agent_id] = replace(agent, suspension=None)
        case _:
            pass


def needs_authentication(view: IntentView, trigger_id: str) -> bool:
    """Whether the ``intent.submitted`` with envelope id ``trigger_id`` still waits for identity:
    not once it is authenticated or rejected, and never for a second "submitted" on a live intent."""
    if view.authenticated is not None or view.submitted_event is None:
        return False
    return view.submitted_event.envelope.id == trigger_id


def rejected(refusal: Refusal) -> ev.IntentRejected:
    """The rejection identity appends for a refusal (its reason reads ``code: sentence``)."""
    return ev.IntentRejected(stage="authenticate", code=refusal.code, reason=str(refusal))


def check_intent(
    view: IntentView, agent: Agent | None, *, now: datetime, clock_skew: timedelta
) -> ev.IntentRejected | None:
    """Everything identity can decide without I/O; None means the intent is authentic so far."""
    refusal = intent_refusal(view, agent, now=now, clock_skew=clock_skew)
    return None if refusal is None else rejected(refusal)


def intent_refusal(view: IntentView, agent: Agent | None, *, now: datetime, clock_skew: timedelta) -> Refusal | None:
    """Why the intent is not the registered agent's own, fresh, signed request, or None."""
    intent = view.submitted
    assert intent is not None and view.agent_id and view.intent_id
    if intent.agent_id != view.agent_id:
        return Refusal(
            code="agent_mismatch",
            reason=f"intent signed for agent {intent.agent_id!r} was published as {view.agent_id!r}",
        )
    if derive_intent_id(intent.agent_id, intent.idempotency_key) != view.intent_id:
        return Refusal(code="intent_id_mismatch", reason="intent id is not derived from (agent_id, idempotency_key)")
    if agent is None:
        return Refusal(code="unknown_agent", reason=f"no agent {intent.agent_id!r} is registered")
    try:
        signed = canonical_json(intent.signed_fields())
    except ValueError as exc:
        return Refusal(
            code="unsignable_intent",
            reason=f"the intent cannot be put in canonical form to check its signature ({exc})",
        )
    try:
        issued = parse_time(intent.issued_at)
    except ValueError:
        return Refusal(code="bad_issued_at", reason=f"issued_at {intent.issued_at!r} is not an RFC 3339 time")
    return signature_refusal(agent, signed, intent.signature, issued) or standing_refusal(
        agent, intent, issued, now=now, clock_skew=clock_skew
    )


def signature_refusal(agent: Agent, signed: bytes, signature: str, issued: datetime) -> Refusal | None:
    """Why ``signature`` is not the agent's over ``signed``: neither key, or the previous key after
    its grace period (judged by when the intent was issued)."""
    if verifies(agent.public_key, signed, signature):
        return None
    old_key = agent.previous_public_key
    if not old_key or not verifies(old_key, signed, signature):
        return Refusal(
            code="bad_signature", reason=f"intent signed by a key not registered for agent {agent.agent_id!r}"
        )
    if agent.previous_valid_until is None or issued > agent.previous_valid_until:
        return Refusal(
            code="key_rotated",
            reason=f"intent signed with agent {agent.agent_id!r}'s previous key, valid only for intents issued"
            f" until {agent.previous_valid_until}",
        )
    return None


def standing_refusal(
    agent: Agent, intent: ev.IntentSubmitted, issued: datetime, *, now: datetime, clock_skew: timedelta
) -> Refusal | None:
    """Why an authentically signed intent still may not go on: the agent was revoked before it was
    issued, it is outside the freshness window, or it acts for someone the agent may not."""
    if agent.revoked_at is not None and issued >= agent.revoked_at:
        return Refusal(
            code="agent_revoked", reason=f"agent {agent.agent_id!r} was revoked at {agent.revoked_at.isoformat()}"
        )
    if abs(now - issued) > clock_skew:
        return Refusal(
            code="stale_intent",
            reason=f"issued_at {intent.issued_at} is outside the {clock_skew.total_seconds():g}s freshness window",
        )
    if intent.on_behalf_of and intent.on_behalf_of not in agent.acts_for and "*" not in agent.acts_for:
        return Refusal(
            code="delegation_refused", reason=f"agent {agent.agent_id!r} may not act for {intent.on_behalf_of!r}"
        )
    return None


def nonce_key(intent: ev.IntentSubmitted) -> str:
    """Where an agent's nonce is held while it could still be replayed."""
    return f"writ:nonce:{intent.agent_id}:{intent.nonce}"


def nonce_ttl_seconds(clock_skew_seconds: float) -> int:
    """How long a nonce is held: past the whole freshness window on either side of now, after
    which ``stale_intent`` refuses a replay anyway."""
    return int(2 * clock_skew_seconds) + 1


def nonce_is_fresh(*, claimed: bool, holder: str | bytes | None, intent_id: str) -> bool:
    """Whether a nonce is this intent's own: it claimed it just now, or it held it already (the
    held value is the intent id, so a redelivery of the same intent is not a replay)."""
    if claimed:
        return True
    held = holder.decode() if isinstance(holder, bytes) else holder
    return held is not None and held == intent_id


def authentication(
    agent: Agent, intent: ev.IntentSubmitted, *, nonce_fresh: bool
) -> ev.IntentAuthenticated | ev.IntentRejected:
    """The verdict on an intent that passed :func:`check_intent`, given whether its nonce is fresh."""
    if not nonce_fresh:
        return rejected(
            Refusal(code="nonce_reused", reason=f"nonce {intent.nonce!r} was already used by another intent")
        )
    return authenticated(agent)


def verifies(public_key: str, message: bytes, signature: str) -> bool:
    try:
        verify(public_key, message, signature)
    except SignatureInvalid:
        return False
    return True


def authenticated(agent: Agent) -> ev.IntentAuthenticated:
    return ev.IntentAuthenticated(key_id=agent.key_id, owner=agent.owner, teams=list(agent.teams))


def bus_revocations(agents: Mapping[str, Agent]) -> dict[str, int]:
    """The Writ account's revocations: each revoked or ever suspended agent's bus key -> when (unix
    seconds; the later of its revocation and its last suspension). The cluster refuses every user
    JWT of that key issued at or before then (nats-server ``isRevoked``: refused while ``iat <=`` the
    time), and drops its connections. A reinstated agent's new JWT is issued after it."""
    revoked = {}
    for a in agents.values():
        times = [t for t in (a.revoked_at, a.bus_refused_at) if t is not None]
        if a.bus_key and times:
            revoked[a.bus_key] = int(max(times).timestamp())
    return revoked


def metered_agents(agents: Mapping[str, Agent]) -> dict[str, str]:
    """Bus key -> agent id of the agents whose ingress is metered: registered with a bus key, neither
    revoked nor suspended (the bus refuses those already). Every other user is not an agent."""
    return {a.bus_key: a.agent_id for a in agents.values() if a.bus_key and a.status == "active"}


def suspension_message_id(agent: Agent) -> str:
    """The next suspension's message id: replicas measuring the same flood append it once."""
    return f"suspend:{agent.agent_id}:{agent.suspensions + 1}"


def bus_jwt_not_before(agent: Agent) -> int | None:
    """The first unix second a new user JWT of the agent may be issued at to be let in: strictly
    after its last suspension (a JWT issued in the same second is refused), or None."""
    return int(agent.bus_refused_at.timestamp()) + 1 if agent.bus_refused_at else None


def reinstatement(agent: Agent, *, reinstated_at: str) -> ev.AgentReinstated | None:
    """Issuing a suspended agent's bus JWT again reinstates it; nothing to record otherwise."""
    if agent.suspension is None:
        return None
    return ev.AgentReinstated(
        agent_id=agent.agent_id, reinstated_at=reinstated_at, suspended_at=agent.suspension.suspended_at
    )


# -- commands ----------------------------------------------------------------------------------


def token_refusal(value: str, *, code: str, what: str) -> Refusal | None:
    """Ids that become subject tokens must be one; else refuse with ``code`` (e.g. invalid_agent_id)."""
    return None if is_token(value) else Refusal(code=code, reason=f"{what} {value!r} must match {TOKEN_RULE}")


def reserved_refusal(agent_id: str) -> Refusal | None:
    """An agent's notices are ``writ.notice.<agent id>.>``: an id that names other notices (the
    approvers' ``writ.notice.approvals.>``) would let the agent read them."""
    if agent_id not in subjects.RESERVED_AGENT_IDS:
        return None
    return Refusal(
        code="invalid_agent_id",
        reason=f"agent id {agent_id!r} is reserved: writ.notice.{agent_id}.> carries other notices; choose another",
    )


def public_key_refusal(public_key: str) -> Refusal | None:
    """Why ``public_key`` is not a base64 Ed25519 public key, or None."""
    try:
        if len(unb64(public_key)) == 32:
            return None
    except ValueError:
        pass
    return Refusal(code="invalid_public_key", reason="public_key must be a base64 Ed25519 public key (32 bytes)")


def bus_key_refusal(bus_key: str | None, *, is_user_nkey: Callable[[str], bool]) -> Refusal | None:
    """Why ``bus_key`` is not a NATS user public nkey (``is_user_nkey`` checks its form), or None: no key is fine."""
    if bus_key is None or is_user_nkey(bus_key):
        return None
    return Refusal(code="invalid_bus_key", reason="bus_key must be a NATS user public nkey (U...)")


def agent_registration_refusal(
    agent_id: str, public_key: str, bus_key: str | None, *, is_user_nkey: Callable[[str], bool]
) -> Refusal | None:
    """Why an agent cannot be registered with these keys, or None."""
    return (
        token_refusal(agent_id, code="invalid_agent_id", what="agent id")
        or reserved_refusal(agent_id)
        or public_key_refusal(public_key)
        or bus_key_refusal(bus_key, is_user_nkey=is_user_nkey)
    )


def approver_registration_refusal(
    approver_id: str,
    public_key: str,
    groups: Sequence[str],
    bus_key: str | None,
    *,
    is_user_nkey: Callable[[str], bool],
) -> Refusal | None:
    """Why an approver cannot be registered, or None. Each group is a subject token (the approver
    hears ``writ.notice.approvals.<group>.*``)."""
    if refusal := token_refusal(approver_id, code="invalid_approver_id", what="approver id") or public_key_refusal(
        public_key
    ):
        return refusal
    if not groups:
        return Refusal(code="invalid_groups", reason="an approver belongs to at least one group")
    for group in groups:
        if refusal := token_refusal(group, code="invalid_group", what="approval group"):
            return refusal
    return bus_key_refusal(bus_key, is_user_nkey=is_user_nkey)


def reader_token_refusal(name: str, token_hash: str, scope: str) -> Refusal | None:
    """Why a views API token cannot be recorded (it is recorded by its hash only), or None."""
    if refusal := token_refusal(name, code="invalid_name", what="token name"):
        return refusal
    if not TOKEN_HASH.fullmatch(token_hash):
        return Refusal(code="invalid_token_hash", reason="token_hash must read sha256:<64 lowercase hex digits>")
    if scope not in ev.READER_SCOPES:
        return Refusal(
            code="invalid_scope", reason=f"scope must be one of {', '.join(ev.READER_SCOPES)}, not {scope!r}"
        )
    return None


def known(agent: Agent | None, agent_id: str) -> Agent | Refusal:
    """The registered agent, or ``unknown_agent``."""
    return agent if agent is not None else Refusal(code="unknown_agent", reason=f"no agent {agent_id!r} is registered")


def active(agent: Agent | None, agent_id: str) -> Agent | Refusal:
    """The registered, unrevoked agent: only such an agent's key rotates or gets a bus JWT again."""
    found = known(agent, agent_id)
    if isinstance(found, Agent) and found.revoked_at is not None:
        return Refusal(code="agent_revoked", reason=f"agent {agent_id!r} is revoked; register a new agent")
    return found


def rotation(
    agent: Agent | None, agent_id: str, public_key: str, *, grace_seconds: float, now: datetime
) -> ev.AgentKeyRotated | Refusal:
    """The agent's new key; the previous one signs intents issued until ``now + grace_seconds``."""
    if refusal := public_key_refusal(public_key):
        return refusal
    found = active(agent, agent_id)
    if isinstance(found, Refusal):
        return found
    until = now + timedelta(seconds=max(0.0, grace_seconds))
    return ev.AgentKeyRotated(
        agent_id=agent_id,
        public_key=public_key,
        previous_public_key=found.public_key,
        previous_valid_until=until.isoformat(timespec="seconds").replace("+00:00", "Z"),
    )


def revocation(agent: Agent | None, agent_id: str, *, reason: str, revoked_at: str) -> ev.AgentRevoked | Refusal:
    """The agent's revocation, or why not (unknown, or revoked already: once is the rule)."""
    found = known(agent, agent_id)
    if isinstance(found, Refusal):
        return found
    if found.revoked_at is not None:
        return Refusal(
            code="already_revoked", reason=f"agent {agent_id!r} was revoked at {found.revoked_at.isoformat()}"
        )
    return ev.AgentRevoked(agent_id=agent_id, revoked_at=revoked_at, reason=reason)


def bus_key_holder(agent: Agent | None, agent_id: str) -> Agent | Refusal:
    """The agent whose bus user JWT may be issued again: registered, unrevoked, with a bus key."""
    found = active(agent, agent_id)
    if isinstance(found, Agent) and not found.bus_key:
        return Refusal(code="no_bus_key", reason=f"agent {agent_id!r} was registered without a bus key")
    return found

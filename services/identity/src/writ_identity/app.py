"""Identity service wiring: consumes intent.submitted, answers agent commands."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import redis.asyncio as aioredis
from nats.aio.msg import Msg

from writ_common import events as ev
from writ_common import metrics, subjects
from writ_common.approvals import Approver, apply_approver_event
from writ_common.bus import StaleAppend, last_on_subject
from writ_common.busauth import agent_user, approver_user, is_user_nkey
from writ_common.commands import CommandError, granted, refuse_if
from writ_common.envelope import StoredEvent, utcnow
from writ_common.fold import IntentView
from writ_common.ids import new_event_id
from writ_common.service import Service
from writ_common.settings import WritSettings
from writ_common.signing import key_id
from writ_identity import domain
from writ_identity.busaccount import BusAccount
from writ_identity.domain import Agent, apply_identity_event
from writ_identity.ingress import IngressGuard
from writ_identity.ingress_rules import Budget, Rate, suspension

log = logging.getLogger(__name__)


class RegisterAgent(msgspec.Struct, kw_only=True):
    agent_id: str
    public_key: str
    owner: str = "unknown"
    teams: list[str] = []
    acts_for: list[str] = []
    bus_key: str | None = None


class RotateKey(msgspec.Struct, kw_only=True):
    agent_id: str
    public_key: str
    grace_seconds: float = 3600.0


class RevokeAgent(msgspec.Struct, kw_only=True):
    agent_id: str
    reason: str = ""


class AgentQuery(msgspec.Struct, kw_only=True):
    agent_id: str


class IssueBusJwt(msgspec.Struct, kw_only=True):
    agent_id: str
    bus_key: str | None = None  # the key the caller holds the seed of: refused before anything is recorded


class RegisterApprover(msgspec.Struct, kw_only=True):
    approver_id: str
    public_key: str
    groups: list[str]
    bus_key: str | None = None


class IssueReaderToken(msgspec.Struct, kw_only=True):
    name: str
    token_hash: str
    scope: str = ev.SUMMARY_SCOPE  # least privilege unless the operator asks for arguments and results


class RevokeReaderToken(msgspec.Struct, kw_only=True):
    name: str
    reason: str = ""


class Identity:
    """Identity's state, the agents and approvers folded from its stream, and its handlers:
    authenticating intents (signature, freshness, nonce) and the agent/approver/token commands."""

    def __init__(self, svc: Service, settings: WritSettings) -> None:
        self.svc = svc
        self.settings = settings
        self.agents: dict[str, Agent] = {}
        self.approvers: dict[str, Approver] = {}
        self.redis = aioredis.from_url(settings.resolved_redis_url(), **settings.redis_options())
        self.follower = svc.follow(subjects.IDENTITY_STREAM, self.apply)
        self.bus = BusAccount(settings, self.agents, self.follower)
        self.ingress = IngressGuard(settings, self.bus.issuer, self.agents, self.suspend_over_budget)

    def apply(self, event: StoredEvent) -> None:
        apply_identity_event(self.agents, event)
        apply_approver_event(self.approvers, event)

    def wire(self) -> None:
        """Every subscription, command and background task of the service, in one place."""
        svc = self.svc
        svc.on_startup(self.bus.start)
        svc.on_startup(self.ingress.start)
        svc.on_shutdown(self.ingress.stop)
        svc.on_shutdown(self.bus.stop)
        svc.on_shutdown(self.redis.aclose)
        svc.consume_intents(subjects.intents_of_type("intent.submitted"), self.on_submitted)
        svc.command("register_agent", self.register_agent)
        svc.command("list_agents", self.list_agents)
        svc.command("register_approver", self.register_approver)
        svc.command("rotate_key", self.rotate_key)
        svc.command("revoke_agent", self.revoke_agent)
        svc.command("show_agent", self.show_agent)
        svc.command("agent_bus_jwt", self.agent_bus_jwt)
        svc.command("list_approvers", self.list_approvers)
        svc.command("issue_reader_token", self.issue_reader_token)
        svc.command("revoke_reader_token", self.revoke_reader_token)
        svc.command("ping", self.ping)

    async def lookup(self, agent_id: str) -> Agent | None:
        if agent_id not in self.agents:
            await self.follower.ensure_fresh()
        return self.agents.get(agent_id)

    async def nonce_is_fresh(self, intent: ev.IntentSubmitted, intent_id: str) -> bool:
        """Claim the intent's nonce (the value is the intent id, so a redelivery is not a replay)."""
        key = domain.nonce_key(intent)
        claimed = await self.redis.set(
            key, intent_id, nx=True, ex=domain.nonce_ttl_seconds(self.settings.clock_skew_seconds)
        )
        holder = None if claimed else await self.redis.get(key)
        return domain.nonce_is_fresh(claimed=bool(claimed), holder=holder, intent_id=intent_id)

    async def on_submitted(self, trigger: StoredEvent, _raw: Msg) -> None:
        async def decide(view: IntentView) -> list[ev.Payload]:
            if not domain.needs_authentication(view, trigger.envelope.id):
                return []
            agent = await self.lookup(view.submitted.agent_id if view.submitted else "")
            skew = timedelta(seconds=self.settings.clock_skew_seconds)
            rejection = domain.check_intent(view, agent, now=datetime.now(UTC), clock_skew=skew)
            if rejection is not None:
                return [rejection]
            assert agent is not None and view.submitted is not None and view.intent_id
            fresh = await self.nonce_is_fresh(view.submitted, view.intent_id)
            return [domain.authentication(agent, view.submitted, nonce_fresh=fresh)]

        await self.svc.run_stage(trigger, "authenticate", decide)

    async def register_agent(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RegisterAgent)
        refuse_if(
            domain.agent_registration_refusal(cmd.agent_id, cmd.public_key, cmd.bus_key, is_user_nkey=is_user_nkey)
        )
        payload = ev.AgentRegistered(
            agent_id=cmd.agent_id,
            public_key=cmd.public_key,
            owner=cmd.owner,
            teams=cmd.teams,
            acts_for=cmd.acts_for,
            bus_key=cmd.bus_key,
        )
        try:
            await self.svc.append_control(
                subjects.agent_subject(cmd.agent_id),
                payload,
                agent_id=cmd.agent_id,
                message_id=f"agent:{cmd.agent_id}:registered",
                expected_last_subject_seq=0,
            )
        except StaleAppend as exc:
            raise CommandError("agent_exists", f"agent {cmd.agent_id!r} is already registered") from exc
        await self.follower.ensure_fresh()
        bus_key = cmd.bus_key
        issued = (
            self.bus.user_jwt(f"agent {cmd.agent_id!r}", functools.partial(agent_user, cmd.agent_id, bus_key))
            if bus_key
            else {}
        )
        return {"agent_id": cmd.agent_id, "key_id": key_id(cmd.public_key), "bus_user": bus_key is not None, **issued}

    async def list_agents(self, _body: dict[str, Any]) -> Any:
        await self.follower.ensure_fresh()
        return [
            {
                "agent_id": a.agent_id,
                "owner": a.owner,
                "teams": list(a.teams),
                "acts_for": list(a.acts_for),
                "key_id": a.key_id,
                "status": a.status,
                **suspension_row(a),
            }
            for a in sorted(self.agents.values(), key=lambda a: a.agent_id)
        ]

    async def append_agent_event(self, agent_id: str, event: str, payload: ev.Payload, message_id: str) -> None:
        subject = subjects.agent_event_subject(agent_id, event)
        last = await last_on_subject(self.svc.js, subjects.IDENTITY_STREAM, subject)
        await self.svc.append_control(
            subject,
            payload,
            agent_id=agent_id,
            message_id=message_id,
            expected_last_subject_seq=(last.seq or 0) if last else 0,
        )
        await self.follower.ensure_fresh()

    async def rotate_key(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RotateKey)
        agent = await self.lookup(cmd.agent_id)
        rotated = granted(
            domain.rotation(agent, cmd.agent_id, cmd.public_key, grace_seconds=cmd.grace_seconds, now=datetime.now(UTC))
        )
        try:
            await self.append_agent_event(
                cmd.agent_id, "key_rotated", rotated, f"rotate:{cmd.agent_id}:{key_id(cmd.public_key)}"
            )
        except StaleAppend as exc:
            raise CommandError("concurrent_update", "the agent's key changed at the same moment; retry") from exc
        return {
            "agent_id": cmd.agent_id,
            "key_id": key_id(cmd.public_key),
            "previous_valid_until": rotated.previous_valid_until,
        }

    async def revoke_agent(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RevokeAgent)
        revoked = granted(
            domain.revocation(await self.lookup(cmd.agent_id), cmd.agent_id, reason=cmd.reason, revoked_at=utcnow())
        )
        try:
            await self.append_agent_event(cmd.agent_id, "revoked", revoked, f"revoke:{cmd.agent_id}")
        except StaleAppend as exc:
            raise CommandError("already_revoked", f"agent {cmd.agent_id!r} was revoked at the same moment") from exc
        await self.bus.push()  # and every node drops its bus connections and refuses it
        return {"agent_id": cmd.agent_id, "revoked_at": revoked.revoked_at}

    async def suspend_over_budget(self, rate: Rate, budget: Budget) -> None:
        """Suspend an agent measured over its ingress budget: record it (once, however many replicas
        measured it), then push the account refusing its bus key as of now, so every node closes its
        connections. Its stored intents run as usual; it is not revoked."""
        await self.follower.ensure_fresh()
        agent = self.agents.get(rate.agent_id)
        if agent is None or agent.status != "active":
            return
        suspended = suspension(rate, budget, suspended_at=utcnow())
        try:
            await self.append_agent_event(agent.agent_id, "suspended", suspended, domain.suspension_message_id(agent))
            metrics.AGENT_SUSPENSIONS.labels(suspended.code).inc()
            log.warning("identity: suspended at the bus (%s): %s", suspended.code, suspended.reason)
        except StaleAppend:
            await self.follower.ensure_fresh()  # another replica recorded it first: push what the log says
        with contextlib.suppress(CommandError):  # logged; the resync pushes it again
            await self.bus.push()

    async def agent_bus_jwt(self, body: dict[str, Any]) -> Any:
        """The user JWT for a registered, unrevoked agent's bus key, issued again: for creds lost,
        or written by an older Writ (a bare ``.nk`` seed). For a suspended agent it is the
        reinstatement (recorded): the JWT is issued strictly after the suspension, which refuses
        every JWT issued until then. Operators only, like every identity command."""
        cmd = msgspec.convert(body, IssueBusJwt)
        agent_id = cmd.agent_id
        await self.follower.ensure_fresh()  # a suspension another replica recorded dates the new JWT
        agent = granted(domain.bus_key_holder(self.agents.get(agent_id), agent_id))
        assert agent.bus_key is not None
        if cmd.bus_key is not None and cmd.bus_key != agent.bus_key:
            raise CommandError("bus_key_mismatch", f"that seed is not of the bus key agent {agent_id!r} registered")
        if self.bus.issuer is None:
            raise CommandError("open_bus", "this plane's identity issues no bus credentials (no WRIT_NATS_ISSUER_FILE)")
        not_before = domain.bus_jwt_not_before(agent)
        if not_before is not None and time.time() < not_before:
            await asyncio.sleep(not_before - time.time())  # at most a second: the bus compares whole seconds
        if reinstated := domain.reinstatement(agent, reinstated_at=utcnow()):
            try:
                await self.append_agent_event(
                    agent_id, "reinstated", reinstated, f"reinstate:{agent_id}:{reinstated.suspended_at}"
                )
            except StaleAppend as exc:
                raise CommandError(
                    "concurrent_update", f"agent {agent_id!r} changed at the same moment; retry"
                ) from exc
        issued = self.bus.user_jwt(f"agent {agent_id!r}", functools.partial(agent_user, agent_id, agent.bus_key))
        return {"agent_id": agent_id, "bus_key": agent.bus_key, "reinstated": reinstated is not None, **issued}

    async def show_agent(self, body: dict[str, Any]) -> Any:
        agent_id = msgspec.convert(body, AgentQuery).agent_id
        return agent_row(granted(domain.known(await self.lookup(agent_id), agent_id)))

    async def register_approver(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RegisterApprover)
        refuse_if(
            domain.approver_registration_refusal(
                cmd.approver_id, cmd.public_key, cmd.groups, cmd.bus_key, is_user_nkey=is_user_nkey
            )
        )
        payload = ev.ApproverRegistered(
            approver_id=cmd.approver_id, public_key=cmd.public_key, groups=cmd.groups, bus_key=cmd.bus_key
        )
        try:
            await self.svc.append_control(
                subjects.approver_subject(cmd.approver_id),
                payload,
                message_id=f"approver:{cmd.approver_id}:registered",
                expected_last_subject_seq=0,
            )
        except StaleAppend as exc:
            raise CommandError("approver_exists", f"approver {cmd.approver_id!r} is already registered") from exc
        await self.follower.ensure_fresh()
        bus_key = cmd.bus_key
        issued = (
            self.bus.user_jwt(
                f"approver {cmd.approver_id!r}", functools.partial(approver_user, cmd.approver_id, bus_key, cmd.groups)
            )
            if bus_key
            else {}
        )
        return {"approver_id": cmd.approver_id, "key_id": key_id(cmd.public_key), "groups": cmd.groups, **issued}

    async def issue_reader_token(self, body: dict[str, Any]) -> Any:
        """Record a views API token by its hash (the token itself never reaches the plane)."""
        cmd = msgspec.convert(body, IssueReaderToken)
        refuse_if(domain.reader_token_refusal(cmd.name, cmd.token_hash, cmd.scope))
        payload = ev.ReaderTokenIssued(name=cmd.name, token_hash=cmd.token_hash, scope=cmd.scope)
        await self.svc.append_control(
            subjects.reader_token_subject(cmd.name, "issued"),
            payload,
            message_id=f"reader:{cmd.name}:issued:{cmd.token_hash}",
        )
        return {"name": cmd.name, "scope": cmd.scope}

    async def revoke_reader_token(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RevokeReaderToken)
        refuse_if(domain.token_refusal(cmd.name, code="invalid_name", what="token name"))
        issued = subjects.reader_token_subject(cmd.name, "issued")
        if await last_on_subject(self.svc.js, subjects.IDENTITY_STREAM, issued) is None:
            raise CommandError("not_found", f"no views token named {cmd.name!r} was issued")
        payload = ev.ReaderTokenRevoked(name=cmd.name, reason=cmd.reason)
        await self.svc.append_control(
            subjects.reader_token_subject(cmd.name, "revoked"),
            payload,
            message_id=f"reader:{cmd.name}:revoked:{new_event_id()}",
        )
        return {"name": cmd.name}

    async def list_approvers(self, _body: dict[str, Any]) -> Any:
        await self.follower.ensure_fresh()
        return [
            {"approver_id": a.approver_id, "groups": list(a.groups), "key_id": a.key_id, "active": a.active}
            for a in sorted(self.approvers.values(), key=lambda a: a.approver_id)
        ]

    async def ping(self, _body: dict[str, Any]) -> Any:
        return {"service": self.svc.name, "agents": len(self.agents), "dead_letters": self.svc.dead_letters}


def agent_row(agent: Agent) -> dict[str, Any]:
    """What `writ agent show` prints: the agent's keys by id, never the keys themselves."""
    return {
        "agent_id": agent.agent_id,
        "owner": agent.owner,
        "teams": list(agent.teams),
        "acts_for": list(agent.acts_for),
        "key_id": agent.key_id,
        "previous_key_id": key_id(agent.previous_public_key) if agent.previous_public_key else None,
        "previous_valid_until": agent.previous_valid_until.isoformat() if agent.previous_valid_until else None,
        "revoked_at": agent.revoked_at.isoformat() if agent.revoked_at else None,
        "status": agent.status,
        **suspension_row(agent),
    }


def suspension_row(agent: Agent) -> dict[str, Any]:
    """Why and since when a suspended agent is refused at the bus, with the figures measured."""
    s = agent.suspension
    if s is None:
        return {}
    return {
        "suspended_at": s.suspended_at,
        "suspended_code": s.code,
        "suspended_reason": s.reason,
    }


def build(settings: WritSettings) -> Service:
    svc = Service("identity", settings)
    Identity(svc, settings).wire()
    return svc

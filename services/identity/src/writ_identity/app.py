"""Identity service wiring: consumes intent.submitted, answers agent commands."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import redis.asyncio as aioredis
from nats.aio.msg import Msg

from writ_common import events as ev
from writ_common import subjects
from writ_common.approvals import Approver, apply_approver_event
from writ_common.bus import StaleAppend, last_on_subject
from writ_common.busauth import (
    BusUpdateFailed,
    BusUser,
    Issuer,
    agent_user,
    approver_user,
    is_user_nkey,
    push_revocations,
    reconcile_revocations,
)
from writ_common.commands import CommandError, require_token
from writ_common.envelope import StoredEvent, utcnow
from writ_common.fold import IntentView
from writ_common.ids import new_event_id
from writ_common.service import Service
from writ_common.settings import WritSettings
from writ_common.signing import key_id, unb64
from writ_identity.domain import Agent, apply_identity_event, authenticated, bus_revocations, check_intent

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


TOKEN_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


def check_public_key(public_key: str) -> None:
    try:
        if len(unb64(public_key)) != 32:
            raise ValueError
    except ValueError as exc:
        raise CommandError("invalid_public_key", "public_key must be a base64 Ed25519 public key (32 bytes)") from exc


def check_bus_key(bus_key: str | None) -> None:
    if bus_key is not None and not is_user_nkey(bus_key):
        raise CommandError("invalid_bus_key", "bus_key must be a NATS user public nkey (U...)")


def build(settings: WritSettings) -> Service:
    svc = Service("identity", settings)
    agents: dict[str, Agent] = {}
    approvers: dict[str, Approver] = {}

    def apply(event: StoredEvent) -> None:
        apply_identity_event(agents, event)
        apply_approver_event(approvers, event)

    redis = aioredis.from_url(settings.resolved_redis_url(), **settings.redis_options())
    follower = svc.follow(subjects.IDENTITY_STREAM, apply)

    issuer = Issuer.load(settings.nats_issuer_file) if settings.nats_issuer_file else None

    def bus_jwt(who: str, make: Callable[[], BusUser]) -> dict[str, str]:
        """``{"bus_jwt": ...}``: the user JWT (public claims, no secret) for a registered key, by
        which the cluster lets it in with its allow lists at once; nothing on an open bus.

        Raises:
            CommandError: ``invalid_bus_user``: a name that cannot be a subject token.
        """
        if issuer is None:
            return {}
        try:
            return {"bus_jwt": issuer.user_jwt(make())}
        except ValueError as exc:
            raise CommandError("invalid_bus_user", f"{who} cannot be a bus user: {exc}") from exc

    async def push_account() -> None:
        """Give the cluster the Writ account with every revoked agent's bus key listed: each node
        drops its connections and refuses it from then on. No restart, no file on any server.

        Raises:
            CommandError: ``bus_update_failed``: the cluster did not take it (the revocation is
                recorded and is pushed again at the next revocation or start).
        """
        if issuer is None:
            return
        await follower.ensure_fresh()
        try:
            pushed = await push_revocations(settings.nats_servers(), issuer, bus_revocations(agents))
        except BusUpdateFailed as exc:
            log.error("identity: %s", exc.message)
            raise CommandError(exc.code, exc.message) from exc
        log.info("identity: bus account pushed (%d revoked bus users)", len(pushed))

    async def lookup(agent_id: str) -> Agent | None:
        if agent_id not in agents:
            await follower.ensure_fresh()
        return agents.get(agent_id)

    async def nonce_is_fresh(intent: ev.IntentSubmitted, intent_id: str) -> bool:
        # The value is the intent id so a redelivery of the same intent is not a replay.
        key = f"writ:nonce:{intent.agent_id}:{intent.nonce}"
        ttl = int(2 * settings.clock_skew_seconds) + 1
        if await redis.set(key, intent_id, nx=True, ex=ttl):
            return True
        seen = await redis.get(key)
        return seen is not None and (seen.decode() if isinstance(seen, bytes) else seen) == intent_id

    async def on_submitted(trigger: StoredEvent, _raw: Msg) -> None:
        async def decide(view: IntentView) -> list[ev.Payload]:
            if view.authenticated is not None or view.submitted_event is None:
                return []
            if view.submitted_event.envelope.id != trigger.envelope.id:
                return []  # a second "submitted" on a live intent changes nothing
            agent = await lookup(view.submitted.agent_id if view.submitted else "")
            now = datetime.now(UTC)
            rejection = check_intent(view, agent, now=now, clock_skew=timedelta(seconds=settings.clock_skew_seconds))
            if rejection is not None:
                return [rejection]
            assert agent is not None and view.submitted is not None and view.intent_id
            if not await nonce_is_fresh(view.submitted, view.intent_id):
                return [
                    ev.IntentRejected(
                        stage="authenticate",
                        code="nonce_reused",
                        reason=f"nonce_reused: nonce {view.submitted.nonce!r} was already used by another intent",
                    )
                ]
            return [authenticated(agent)]

        await svc.run_stage(trigger, "authenticate", decide)

    async def register_agent(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RegisterAgent)
        require_token(cmd.agent_id, code="invalid_agent_id", what="agent id")
        check_public_key(cmd.public_key)
        check_bus_key(cmd.bus_key)
        payload = ev.AgentRegistered(
            agent_id=cmd.agent_id,
            public_key=cmd.public_key,
            owner=cmd.owner,
            teams=cmd.teams,
            acts_for=cmd.acts_for,
            bus_key=cmd.bus_key,
        )
        try:
            await svc.append_control(
                subjects.agent_subject(cmd.agent_id),
                payload,
                agent_id=cmd.agent_id,
                message_id=f"agent:{cmd.agent_id}:registered",
                expected_last_subject_seq=0,
            )
        except StaleAppend as exc:
            raise CommandError("agent_exists", f"agent {cmd.agent_id!r} is already registered") from exc
        await follower.ensure_fresh()
        bus_key = cmd.bus_key
        issued = (
            bus_jwt(f"agent {cmd.agent_id!r}", functools.partial(agent_user, cmd.agent_id, bus_key)) if bus_key else {}
        )
        return {"agent_id": cmd.agent_id, "key_id": key_id(cmd.public_key), "bus_user": bus_key is not None, **issued}

    async def list_agents(_body: dict[str, Any]) -> Any:
        await follower.ensure_fresh()
        return [
            {
                "agent_id": a.agent_id,
                "owner": a.owner,
                "teams": list(a.teams),
                "acts_for": list(a.acts_for),
                "key_id": a.key_id,
            }
            for a in sorted(agents.values(), key=lambda a: a.agent_id)
        ]

    async def known_agent(agent_id: str) -> Agent:
        agent = await lookup(agent_id)
        if agent is None:
            raise CommandError("unknown_agent", f"no agent {agent_id!r} is registered")
        return agent

    async def append_agent_event(agent_id: str, event: str, payload: ev.Payload, message_id: str) -> None:
        last = await last_on_subject(svc.js, subjects.IDENTITY_STREAM, subjects.agent_event_subject(agent_id, event))
        await svc.append_control(
            subjects.agent_event_subject(agent_id, event),
            payload,
            agent_id=agent_id,
            message_id=message_id,
            expected_last_subject_seq=(last.seq or 0) if last else 0,
        )
        await follower.ensure_fresh()

    async def rotate_key(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RotateKey)
        check_public_key(cmd.public_key)
        agent = await known_agent(cmd.agent_id)
        if agent.revoked_at is not None:
            raise CommandError("agent_revoked", f"agent {cmd.agent_id!r} is revoked; register a new agent")
        until = datetime.now(UTC) + timedelta(seconds=max(0.0, cmd.grace_seconds))
        rotated = ev.AgentKeyRotated(
            agent_id=cmd.agent_id,
            public_key=cmd.public_key,
            previous_public_key=agent.public_key,
            previous_valid_until=until.isoformat(timespec="seconds").replace("+00:00", "Z"),
        )
        try:
            await append_agent_event(
                cmd.agent_id, "key_rotated", rotated, f"rotate:{cmd.agent_id}:{key_id(cmd.public_key)}"
            )
        except StaleAppend as exc:
            raise CommandError("concurrent_update", "the agent's key changed at the same moment; retry") from exc
        return {
            "agent_id": cmd.agent_id,
            "key_id": key_id(cmd.public_key),
            "previous_valid_until": rotated.previous_valid_until,
        }

    async def revoke_agent(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RevokeAgent)
        agent = await known_agent(cmd.agent_id)
        if agent.revoked_at is not None:
            raise CommandError(
                "already_revoked", f"agent {cmd.agent_id!r} was revoked at {agent.revoked_at.isoformat()}"
            )
        revoked = ev.AgentRevoked(agent_id=cmd.agent_id, revoked_at=utcnow(), reason=cmd.reason)
        try:
            await append_agent_event(cmd.agent_id, "revoked", revoked, f"revoke:{cmd.agent_id}")
        except StaleAppend as exc:
            raise CommandError("already_revoked", f"agent {cmd.agent_id!r} was revoked at the same moment") from exc
        await push_account()  # and every node drops its bus connections and refuses it
        return {"agent_id": cmd.agent_id, "revoked_at": revoked.revoked_at}

    async def agent_bus_jwt(body: dict[str, Any]) -> Any:
        """The user JWT for a registered, unrevoked agent's bus key, issued again: for creds lost,
        or written by an older Writ (a bare ``.nk`` seed). Operators only, like every identity command."""
        agent = await known_agent(msgspec.convert(body, AgentQuery).agent_id)
        if agent.revoked_at is not None:
            raise CommandError("agent_revoked", f"agent {agent.agent_id!r} is revoked; register a new agent")
        if not agent.bus_key:
            raise CommandError("no_bus_key", f"agent {agent.agent_id!r} was registered without a bus key")
        issued = bus_jwt(f"agent {agent.agent_id!r}", functools.partial(agent_user, agent.agent_id, agent.bus_key))
        if not issued:
            raise CommandError("open_bus", "this plane's identity issues no bus credentials (no WRIT_NATS_ISSUER_FILE)")
        return {"agent_id": agent.agent_id, "bus_key": agent.bus_key, **issued}

    async def show_agent(body: dict[str, Any]) -> Any:
        agent = await known_agent(msgspec.convert(body, AgentQuery).agent_id)
        return {
            "agent_id": agent.agent_id,
            "owner": agent.owner,
            "teams": list(agent.teams),
            "acts_for": list(agent.acts_for),
            "key_id": agent.key_id,
            "previous_key_id": key_id(agent.previous_public_key) if agent.previous_public_key else None,
            "previous_valid_until": agent.previous_valid_until.isoformat() if agent.previous_valid_until else None,
            "revoked_at": agent.revoked_at.isoformat() if agent.revoked_at else None,
        }

    async def register_approver(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RegisterApprover)
        require_token(cmd.approver_id, code="invalid_approver_id", what="approver id")
        check_public_key(cmd.public_key)
        if not cmd.groups:
            raise CommandError("invalid_groups", "an approver belongs to at least one group")
        for group in cmd.groups:
            # Each group is a subject token (the approver hears writ.notice.approvals.<group>.*).
            require_token(group, code="invalid_group", what="approval group")
        check_bus_key(cmd.bus_key)
        payload = ev.ApproverRegistered(
            approver_id=cmd.approver_id, public_key=cmd.public_key, groups=cmd.groups, bus_key=cmd.bus_key
        )
        try:
            await svc.append_control(
                subjects.approver_subject(cmd.approver_id),
                payload,
                message_id=f"approver:{cmd.approver_id}:registered",
                expected_last_subject_seq=0,
            )
        except StaleAppend as exc:
            raise CommandError("approver_exists", f"approver {cmd.approver_id!r} is already registered") from exc
        await follower.ensure_fresh()
        bus_key = cmd.bus_key
        issued = (
            bus_jwt(
                f"approver {cmd.approver_id!r}", functools.partial(approver_user, cmd.approver_id, bus_key, cmd.groups)
            )
            if bus_key
            else {}
        )
        return {"approver_id": cmd.approver_id, "key_id": key_id(cmd.public_key), "groups": cmd.groups, **issued}

    async def issue_reader_token(body: dict[str, Any]) -> Any:
        """Record a views API token by its hash (the token itself never reaches the plane)."""
        cmd = msgspec.convert(body, IssueReaderToken)
        require_token(cmd.name, code="invalid_name", what="token name")
        if not TOKEN_HASH.fullmatch(cmd.token_hash):
            raise CommandError("invalid_token_hash", "token_hash must read sha256:<64 lowercase hex digits>")
        if cmd.scope not in ev.READER_SCOPES:
            raise CommandError(
                "invalid_scope", f"scope must be one of {', '.join(ev.READER_SCOPES)}, not {cmd.scope!r}"
            )
        payload = ev.ReaderTokenIssued(name=cmd.name, token_hash=cmd.token_hash, scope=cmd.scope)
        await svc.append_control(
            subjects.reader_token_subject(cmd.name, "issued"),
            payload,
            message_id=f"reader:{cmd.name}:issued:{cmd.token_hash}",
        )
        return {"name": cmd.name, "scope": cmd.scope}

    async def revoke_reader_token(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, RevokeReaderToken)
        require_token(cmd.name, code="invalid_name", what="token name")
        if (
            await last_on_subject(svc.js, subjects.IDENTITY_STREAM, subjects.reader_token_subject(cmd.name, "issued"))
            is None
        ):
            raise CommandError("not_found", f"no views token named {cmd.name!r} was issued")
        payload = ev.ReaderTokenRevoked(name=cmd.name, reason=cmd.reason)
        await svc.append_control(
            subjects.reader_token_subject(cmd.name, "revoked"),
            payload,
            message_id=f"reader:{cmd.name}:revoked:{new_event_id()}",
        )
        return {"name": cmd.name}

    async def list_approvers(_body: dict[str, Any]) -> Any:
        await follower.ensure_fresh()
        return [
            {"approver_id": a.approver_id, "groups": list(a.groups), "key_id": a.key_id, "active": a.active}
            for a in sorted(approvers.values(), key=lambda a: a.approver_id)
        ]

    async def ping(_body: dict[str, Any]) -> Any:
        return {"service": svc.name, "agents": len(agents), "dead_letters": svc.dead_letters}

    async def resync_loop() -> None:
        """Every node holds every revocation: one that was down when an agent was revoked (or
        restarted from its preloaded account) gets the account again within a period."""
        assert issuer is not None
        while True:
            await asyncio.sleep(settings.bus_resync_seconds)
            try:
                await follower.ensure_fresh()
                if await reconcile_revocations(settings.nats_servers(), issuer, bus_revocations(agents)):
                    log.info("identity: a bus node lacked a revocation; the account was pushed again")
            except Exception:
                log.exception("identity: checking the bus nodes' revocations failed; the next period tries again")

    tasks: list[asyncio.Task[None]] = []

    async def sync_at_start() -> None:
        # Revocations recorded while the cluster could not take them reach it now. Serve anyway:
        # the previous account stays in force, and the next revocation pushes again.
        with contextlib.suppress(CommandError):
            await push_account()
        if issuer is not None and settings.bus_resync_seconds > 0:
            tasks.append(asyncio.create_task(resync_loop(), name="identity-bus-resync"))

    async def stop_tasks() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    svc.on_startup(sync_at_start)
    svc.on_shutdown(stop_tasks)
    svc.on_shutdown(redis.aclose)
    svc.consume_intents(subjects.intents_of_type("intent.submitted"), on_submitted)
    svc.command("register_agent", register_agent)
    svc.command("list_agents", list_agents)
    svc.command("register_approver", register_approver)
    svc.command("rotate_key", rotate_key)
    svc.command("revoke_agent", revoke_agent)
    svc.command("show_agent", show_agent)
    svc.command("agent_bus_jwt", agent_bus_jwt)
    svc.command("list_approvers", list_approvers)
    svc.command("issue_reader_token", issue_reader_token)
    svc.command("revoke_reader_token", revoke_reader_token)
    svc.command("ping", ping)
    return svc

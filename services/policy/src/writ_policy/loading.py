"""Loading bundles: check a candidate against Writ's Cedar schema, publish it (fenced on the one
before), evaluate it in shadow, or replay it over the recorded intents (``simulate``). Thin
adapters: the rules are in :mod:`writ_policy.domain`, :mod:`writ_policy.schema` and
:mod:`writ_policy.whatif`."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg

from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import StaleAppend, direct_get_batch, last_on_subject, stored
from writ_common.catalog import Catalog
from writ_common.commands import CommandError, granted, refuse_if, require_token
from writ_common.control import ControlFollower
from writ_common.envelope import StoredEvent, UndecodableEvent
from writ_common.errors import Refusal
from writ_common.fold import fold_intent
from writ_common.service import Service
from writ_policy.desk import ApprovalDesk
from writ_policy.domain import Bundle, PolicyError, check_names, compile_bundle
from writ_policy.rollout import blocks, rollout_picture
from writ_policy.schema import cedar_schema, validation_errors
from writ_policy.state import PolicyState
from writ_policy.whatif import EXAMPLES, Scope, decision_diff, parse_since, replay


class LoadPolicy(msgspec.Struct, kw_only=True):
    cedar: str
    shadow: bool = False  # evaluate beside the enforced bundle and record, never enforce


class Simulate(msgspec.Struct, kw_only=True):
    cedar: str
    since: str | None = None  # 7d, 12h, or an RFC 3339 time
    agent: str | None = None
    tool: str | None = None
    examples: int = EXAMPLES


class Bundles:
    """Publishes bundles on the policy stream and answers what is loaded; owns no state of its
    own (what is published is :class:`PolicyState`, folded from the stream)."""

    def __init__(
        self,
        svc: Service,
        state: PolicyState,
        policies: ControlFollower,
        desk: ApprovalDesk,
    ) -> None:
        self.svc = svc
        self.state = state
        self.policies = policies
        self.desk = desk
        self.catalog = Catalog()  # the tools' input schemas type the arguments in the Cedar schema
        self.registry = svc.follow(subjects.REGISTRY_STREAM, self.catalog.apply)

    def catalog_tools(self) -> list[ev.ToolDefinition]:
        """Every tool definition the catalog holds, accepted or in quarantine."""
        held = (*self.catalog.tools.values(), *self.catalog.quarantined.values())
        return [t for by_name in held for t in by_name.values()]

    async def candidate(self, cedar: str) -> tuple[Bundle, list[str]]:
        """The bundle, and what is wrong with it against Writ's Cedar schema (empty: loadable).

        Raises:
            CommandError: ``invalid_policy``, Cedar cannot parse it or a name cannot be a subject token.
        """
        try:
            bundle = compile_bundle(cedar)
            check_names(bundle)
        except PolicyError as exc:
            raise CommandError("invalid_policy", f"the bundle was refused: {exc}") from exc
        await self.registry.ensure_fresh()
        return bundle, validation_errors(bundle.cedar, bundle.names, cedar_schema(self.catalog_tools()))

    async def loadable(self, cedar: str) -> Bundle:
        """The bundle, if Cedar parses it and it validates against Writ's schema.

        Raises:
            CommandError: ``invalid_policy``, saying what is wrong.
        """
        bundle, errors = await self.candidate(cedar)
        if errors:
            raise CommandError(
                "invalid_policy",
                "the bundle does not validate against Writ's Cedar schema (see `writ policy schema`): "
                + "; ".join(errors),
            )
        return bundle

    async def load(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, LoadPolicy)
        bundle = await self.loadable(cmd.cedar)
        if cmd.shadow:
            return await self.publish_shadow(bundle)
        await self.policies.ensure_fresh()
        refuse_if(blocks(self.state.rollouts, "load a bundle for every agent"))
        await self.publish(bundle)
        return {"policy_digest": bundle.digest, "policy_ids": sorted(bundle.names.values())}

    async def publish(self, bundle: Bundle) -> None:
        """Enforce ``bundle`` for every agent, then re-decide what waits for people under it."""
        published = ev.PolicyBundlePublished(policy_digest=bundle.digest, cedar=bundle.cedar, policy_ids=bundle.names)
        await self.publish_fenced(subjects.POLICY_SUBJECT, published, f"policy:{bundle.digest}", "bundle")
        await self.desk.redecide_pending()

    async def publish_fenced(self, subject: str, published: ev.Payload, message_id: str, what: str) -> None:
        """Append a bundle fenced on the previous one on ``subject``, so two operators loading at
        once cannot both win, then read it back into this replica's view."""
        last = await last_on_subject(self.svc.js, subjects.POLICY_STREAM, subject)
        previous = last.seq or 0 if last else 0
        try:
            await self.svc.append_control(
                subject, published, message_id=f"{message_id}:after:{previous}", expected_last_subject_seq=previous
            )
        except StaleAppend as exc:
            raise CommandError("concurrent_update", f"another {what} was loaded at the same moment; retry") from exc
        await self.policies.ensure_fresh()

    async def publish_shadow(self, bundle: Bundle) -> Any:
        published = ev.PolicyShadowPublished(policy_digest=bundle.digest, cedar=bundle.cedar, policy_ids=bundle.names)
        await self.publish_fenced(
            subjects.SHADOW_PUBLISHED_SUBJECT, published, f"shadow:{bundle.digest}", "shadow bundle"
        )
        return {"policy_digest": bundle.digest, "policy_ids": sorted(bundle.names.values()), "shadow": True}

    async def shadow_off(self, _body: dict[str, Any]) -> Any:
        await self.policies.ensure_fresh()
        shadow = self.state.shadow
        if shadow is None:
            raise CommandError("no_shadow", "no shadow bundle is being evaluated (`writ policy load FILE --shadow`)")
        last = await last_on_subject(self.svc.js, subjects.POLICY_STREAM, subjects.SHADOW_PUBLISHED_SUBJECT)
        await self.svc.append_control(
            subjects.SHADOW_STOPPED_SUBJECT,
            ev.PolicyShadowStopped(policy_digest=shadow.digest),
            message_id=f"shadow-stop:{shadow.digest}:{last.seq if last else 0}",
        )
        await self.policies.ensure_fresh()
        return {"policy_digest": shadow.digest}

    async def show(self, _body: dict[str, Any]) -> Any:
        await self.policies.ensure_fresh()
        bundle, latest = self.state.current, self.state.rollouts.latest
        if bundle is None:
            raise CommandError("no_policy", "no policy bundle is loaded; load one with `writ policy load FILE`")
        return {
            "policy_digest": bundle.digest,
            "policy_ids": sorted(bundle.names.values()),
            "cedar": bundle.cedar,
            "shadow_digest": self.state.shadow.digest if self.state.shadow else None,
            "rollout": rollout_picture(latest, []) if latest and latest.active else None,
        }

    async def schema(self, _body: dict[str, Any]) -> Any:
        await self.registry.ensure_fresh()
        return cedar_schema(self.catalog_tools())

    async def ping(self, _body: dict[str, Any]) -> Any:
        return {"service": self.svc.name, "policy_digest": self.state.current_digest}

    async def simulate(self, body: dict[str, Any]) -> Any:
        """The candidate replayed over the recorded intents beside the enforced bundle: changes nothing."""
        cmd = msgspec.convert(body, Simulate)
        bundle, errors = await self.candidate(cmd.cedar)
        now = datetime.now(UTC)
        scope = granted(scope_of(cmd, now))
        if cmd.agent is not None:
            require_token(cmd.agent, code="invalid_agent_id", what="agent id")
        await self.policies.ensure_fresh()
        enforced = self.state.current
        where = f"{subjects.INTENT_PREFIX}.{cmd.agent or '*'}.*.>"
        msgs = await direct_get_batch(self.svc.nc, subjects.INTENTS_STREAM, where, batch=1024, start_time=scope.since)
        # Cedar's CPU off the loop: live decisions go on meanwhile.
        diff = await asyncio.to_thread(
            replay_recorded, msgs, enforced, bundle, scope, now=now, examples=max(0, cmd.examples)
        )
        return {
            "validation_errors": errors,
            "candidate_digest": bundle.digest,
            "current_digest": enforced.digest if enforced else None,
            "since": scope.since.isoformat().replace("+00:00", "Z") if scope.since else None,
            **diff,
        }


def scope_of(cmd: Simulate, now: datetime) -> Scope | Refusal:
    """Which recorded intents a simulation replays; a ``since`` that reads as no time is refused."""
    try:
        since = parse_since(cmd.since, now) if cmd.since else None
    except ValueError as exc:
        return Refusal(code="invalid_request", reason=str(exc))
    return Scope(since=since, agent=cmd.agent, tool=cmd.tool)


def replay_recorded(
    msgs: list[Msg], enforced: Bundle | None, candidate: Bundle, scope: Scope, *, now: datetime, examples: int
) -> dict[str, Any]:
    """Fold the recorded events into intents and diff the candidate's decisions against the enforced ones."""
    histories: dict[str, list[StoredEvent]] = {}
    for msg in msgs:
        with contextlib.suppress(UndecodableEvent):
            event = stored(msg)
            histories.setdefault(event.subject.rpartition(".")[0], []).append(event)
    views = (fold_intent(events) for events in histories.values())
    return decision_diff(replay(views, enforced, candidate, scope, now=now), examples=examples)

"""Policy service wiring: consumes intent.planned, publishes policy bundles."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import redis.asyncio as aioredis
from nats.aio.msg import Msg

from writ_common import events as ev
from writ_common import subjects, topology
from writ_common.approvals import Approver, apply_approver_event
from writ_common.bus import HistoryBehind, StaleAppend, direct_get_batch, last_on_subject, read_history, stored
from writ_common.catalog import Catalog
from writ_common.commands import CommandError, require_token
from writ_common.envelope import StoredEvent, UndecodableEvent, decode, parse_time
from writ_common.fold import IntentView, fold_intent
from writ_common.intent_consumer import Redeliver
from writ_common.service import FENCE_RETRIES, Decide, Service
from writ_common.settings import WritSettings
from writ_common.stranded import sweep_stage
from writ_policy.approvals import SignedDecision, expire, is_expired, judge
from writ_policy.domain import (
    Bundle,
    PolicyError,
    bundle_from_event,
    check_names,
    compile_bundle,
    decide,
    rate_limited,
    rate_limits_for,
)
from writ_policy.ratelimit import RateLimiter, RateLimitUnavailable
from writ_policy.rollout import (
    OBSERVED_TYPES,
    Rollout,
    RolloutError,
    Rollouts,
    Signals,
    apply_rollout_event,
    ending,
    in_slice,
    next_step,
    parse_spec,
    read,
)
from writ_policy.schema import cedar_schema, validation_errors
from writ_policy.whatif import EXAMPLES, Scope, decision_diff, parse_since, replay, shadow_decided

log = logging.getLogger(__name__)

EXPIRY_TICK = 1.0
ROLLOUT_TICK = 1.0  # how often the rollout controller reads its signals
RATE_STORE_RETRY = 2.0  # seconds between asks while Redis is away


class LoadPolicy(msgspec.Struct, kw_only=True):
    cedar: str
    shadow: bool = False  # evaluate beside the enforced bundle and record, never enforce


class StartRollout(msgspec.Struct, kw_only=True):
    cedar: str
    canary: str | None = None  # "10%"
    agents: list[str] = []
    rollback_if: list[str] = []  # "denial_rate>0.2 over 5m for 30s"
    promote_after: str | None = None  # "30m"
    cooldown: str | None = None  # "60s"
    min_decisions: int = 5


class Simulate(msgspec.Struct, kw_only=True):
    cedar: str
    since: str | None = None  # 7d, 12h, or an RFC 3339 time
    agent: str | None = None
    tool: str | None = None
    examples: int = EXAMPLES


class IntentRef(msgspec.Struct, kw_only=True):
    agent_id: str
    intent_id: str


class ApprovalQuery(msgspec.Struct, kw_only=True):
    approver_id: str | None = None
    intent_id: str | None = None


def build(settings: WritSettings) -> Service:
    svc = Service("policy", settings)
    current: list[Bundle] = []  # the last published bundle, if any
    shadow: list[Bundle] = []  # the candidate evaluated beside it, if one is published and not stopped
    rollouts = Rollouts()  # the canary, folded from the policy stream
    candidates: dict[str, Bundle] = {}  # a rollout's candidate, compiled once
    signals = Signals()  # the slice's decisions since the rollout began, and the hysteresis memory
    approvers: dict[str, Approver] = {}
    pending: dict[str, StoredEvent] = {}  # intent id -> its approval.requested, while it may be open
    tasks: list[asyncio.Task[None]] = []
    redis = aioredis.from_url(
        settings.resolved_redis_url(), **settings.redis_options(), socket_timeout=2.0, socket_connect_timeout=2.0
    )
    limiter = RateLimiter(redis)

    def apply(event: StoredEvent) -> None:
        bundle = bundle_from_event(event)
        if bundle is not None:
            current[:] = [bundle]
        match event.payload:
            case ev.PolicyShadowPublished():
                shadow[:] = [compile_bundle(event.payload.cedar)]
            case ev.PolicyShadowStopped() if shadow and shadow[0].digest == event.payload.policy_digest:
                shadow.clear()
            case ev.PolicyRolloutStarted():
                candidates.clear()
                candidates[event.payload.candidate_digest] = compile_bundle(event.payload.cedar)
            case _:
                pass
        apply_rollout_event(rollouts, event)

    def enforced_for(agent_id: str | None) -> Bundle | None:
        """The bundle that decides for ``agent_id``: a rollout's candidate inside its slice (or for
        everyone once promoted, until the promotion is published), the published bundle elsewhere."""
        rollout = rollouts.latest
        if rollout is not None and (
            rollout.promotion_pending or (rollout.active and agent_id and in_slice(rollout.plan, agent_id))
        ):
            return candidates.get(rollout.plan.candidate_digest)
        return current[0] if current else None

    follower = svc.follow(subjects.POLICY_STREAM, apply)
    catalog = Catalog()  # the tools' input schemas type the arguments in the Cedar schema
    registry = svc.follow(subjects.REGISTRY_STREAM, catalog.apply)

    def catalog_tools() -> list[ev.ToolDefinition]:
        """Every tool definition the catalog holds, accepted or in quarantine."""
        return [t for by_name in (*catalog.tools.values(), *catalog.quarantined.values()) for t in by_name.values()]

    directory = svc.follow(subjects.IDENTITY_STREAM, lambda e: apply_approver_event(approvers, e))

    async def startup() -> None:
        # Open approvals are found in the log, so expiry fires even if we were down at the time.
        requested = await direct_get_batch(
            svc.nc, subjects.INTENTS_STREAM, subjects.intents_of_type("approval.requested")
        )
        for msg in requested:
            with contextlib.suppress(UndecodableEvent):
                remember(stored(msg))
        await svc.nc.subscribe(subjects.intents_of_type("approval.requested"), cb=on_requested_nudge)
        tasks.append(asyncio.create_task(expire_loop(), name="approval-expiry"))
        for event_type in OBSERVED_TYPES:
            await svc.nc.subscribe(subjects.intents_of_type(event_type), cb=on_observed)
        tasks.append(asyncio.create_task(rollout_loop(), name="rollout-controller"))
        # A bundle loaded while we were down still re-decides what waits for people.
        tasks.append(asyncio.create_task(redecide_pending(), name="approval-redecide"))

    async def redecide_pending() -> None:
        """Under a new bundle, a request still waiting for people is decided again: if the new
        policy denies the call (an emergency forbid), it ends denied; a grant cannot revive it."""
        if not current:
            return

        async def decide_again(view: IntentView) -> list[ev.Payload]:
            bundle = enforced_for(view.agent_id)
            if (
                bundle is None
                or not view.approval_pending
                or view.approval is None
                or view.approval.policy_digest == bundle.digest
            ):
                return []
            verdict = decide(view, bundle, now=datetime.now(UTC))
            return [under_new_policy(verdict)] if isinstance(verdict, ev.IntentDenied) else []

        for intent_id, requested in list(pending.items()):
            try:
                if await svc.run_stage(requested, "authorize", decide_again):
                    pending.pop(intent_id, None)
            except Exception:
                log.exception("policy: could not re-decide the approval of %s under the new bundle", intent_id)

    def remember(event: StoredEvent) -> None:
        if isinstance(event.payload, ev.ApprovalRequested) and event.envelope.intent_id:
            pending[event.envelope.intent_id] = event

    async def on_requested_nudge(msg: Msg) -> None:
        with contextlib.suppress(UndecodableEvent):
            remember(decode(msg.data, subject=msg.subject))

    async def expire_loop() -> None:
        while True:
            await asyncio.sleep(EXPIRY_TICK)
            now = datetime.now(UTC)
            for intent_id, requested in list(pending.items()):
                assert isinstance(requested.payload, ev.ApprovalRequested)
                if now <= parse_time(requested.payload.expires_at):
                    continue
                try:
                    await expire_one(requested)
                    pending.pop(intent_id, None)
                except Exception:
                    log.exception("policy: could not expire approval of %s; will retry", intent_id)

    async def expire_one(requested: StoredEvent) -> None:
        async def decide_expiry(view: IntentView) -> list[ev.Payload]:
            return expire(view) if is_expired(view, datetime.now(UTC)) else []

        await svc.run_stage(requested, "authorize", decide_expiry)

    async def open_view(intent_id: str, agent_id: str | None = None) -> tuple[IntentView, int, StoredEvent]:
        requested = pending.get(intent_id)
        agent = agent_id or (requested.envelope.agent_id if requested else None)
        if not agent:
            raise CommandError("not_found", f"no approval request for intent {intent_id!r}")
        # At least as new as the request we know of: a replica behind it would say "no request".
        known = requested if requested and requested.envelope.agent_id == agent else None
        try:
            history = await read_history(
                svc.nc,
                agent,
                intent_id,
                min_seq=known.seq if known else 0,
                event_id=known.envelope.id if known else None,
            )
        except HistoryBehind as exc:
            raise CommandError("busy", f"the log is catching up on intent {intent_id!r}; try again") from exc
        view = fold_intent(history.events)
        trigger = next((e for e in view.events if e.type == "approval.requested"), None)
        if view.approval is None or trigger is None:
            raise CommandError("not_found", f"intent {intent_id!r} has no approval request")
        return view, history.last_seq, trigger

    async def decide_approval(body: dict[str, Any]) -> Any:
        """An operator forwards a decision (the approvals API, tests): the approver's signature is the authority."""
        return await decide_signed(msgspec.convert(body, SignedDecision))

    async def decide_as(approver_id: str, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, SignedDecision)
        if cmd.approver_id != approver_id:
            raise not_you(approver_id, cmd.approver_id)
        return await decide_signed(cmd)

    async def decide_signed(cmd: SignedDecision) -> Any:
        if cmd.approver_id not in approvers:
            await directory.ensure_fresh()
        for _ in range(FENCE_RETRIES):
            view, last_seq, trigger = await open_view(cmd.intent_id, cmd.agent_id)
            if not view.approval_pending:
                raise CommandError(
                    "not_pending", f"intent {cmd.intent_id!r} is {view.status}; it takes no more decisions"
                )
            payloads = judge(view, cmd, approvers.get(cmd.approver_id), now=datetime.now(UTC))
            try:
                # Many decisions land on one intent: the approver and the position keep their ids apart.
                await svc.append_all(view, trigger, payloads, last_seq, attempt=f"{cmd.approver_id}@{last_seq}")
            except StaleAppend:
                continue
            return decision_reply(view, payloads)
        raise CommandError("busy", "the intent kept changing while deciding; try again")

    async def list_approvals(body: dict[str, Any]) -> Any:
        """Operators: everything open, or what one named approver may decide."""
        query = msgspec.convert(body, ApprovalQuery)
        return await pending_for(await groups_of(query.approver_id), query.intent_id)

    async def show_approval(body: dict[str, Any]) -> Any:
        query = msgspec.convert(body, ApprovalQuery)
        return await one_for(query.approver_id, await groups_of(query.approver_id), query.intent_id)

    async def list_mine(approver_id: str, body: dict[str, Any]) -> Any:
        """An approver, on its own subject: only what its groups may decide."""
        query = own_query(approver_id, body)
        return await pending_for(await groups_of(approver_id), query.intent_id)

    async def show_mine(approver_id: str, body: dict[str, Any]) -> Any:
        query = own_query(approver_id, body)
        return await one_for(approver_id, await groups_of(approver_id), query.intent_id)

    async def groups_mine(approver_id: str, body: dict[str, Any]) -> Any:
        own_query(approver_id, body)
        return list(await groups_of(approver_id) or ())

    async def pending_for(groups: tuple[str, ...] | None, intent_id: str | None) -> list[dict[str, Any]]:
        rows = []
        for pending_id in sorted(pending):
            if intent_id and pending_id != intent_id:
                continue
            view, _, _ = await open_view(pending_id)
            if view.approval_pending and view.approval and (groups is None or view.approval.approvers in groups):
                rows.append(approval_picture(view))
        return rows

    async def one_for(approver_id: str | None, groups: tuple[str, ...] | None, intent_id: str | None) -> Any:
        if not intent_id:
            raise CommandError("invalid_request", "show needs an intent_id")
        view, _, _ = await open_view(intent_id)
        assert view.approval is not None
        if groups is not None and view.approval.approvers not in groups:
            raise CommandError("forbidden", f"{approver_id!r} is not in group {view.approval.approvers!r}")
        return approval_picture(view)

    async def groups_of(approver_id: str | None) -> tuple[str, ...] | None:
        """None: no approver named, everything is visible (an operator's view)."""
        if approver_id is None:
            return None
        if approver_id not in approvers:
            await directory.ensure_fresh()
        if approver_id not in approvers:
            raise CommandError("unknown_approver", f"no approver {approver_id!r} is registered")
        return approvers[approver_id].groups

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
        await redis.aclose()

    async def on_planned(trigger: StoredEvent, _raw: Msg) -> None:
        asked: list[ev.ApprovalRequested] = []

        async def decide_intent(view: IntentView) -> list[ev.Payload]:
            if view.planned is None or view.authorized is not None or view.approval is not None:
                return []
            bundle = enforced_for(view.agent_id)
            now = datetime.now(UTC)
            decision = decide(view, bundle, now=now)
            # Recorded before the decision, so nothing waits on it and a retry dedupes it.
            beside = [shadow_decided(view, decision, bundle, shadow[0], now=now)] if shadow else []
            limits = rate_limits_for(decision, bundle)
            if not limits:
                return [*beside, decision]
            assert view.agent_id and view.intent_id and view.planned
            try:
                exceeded = await limiter.admit(
                    limits,
                    agent_id=view.agent_id,
                    tool=f"{view.planned.server}/{view.planned.tool}",
                    intent_id=view.intent_id,
                )
            except RateLimitUnavailable as exc:
                # Fail closed: an uncounted call is not authorized; the intent waits (or expires).
                log.warning("policy: not deciding %s yet: %s", view.intent_id, exc)
                raise Redeliver(RATE_STORE_RETRY, f"not authorizing without counting: {exc}") from exc
            return [*beside, decision if exceeded is None else rate_limited(view, decision, exceeded)]

        if await svc.run_stage(trigger, "authorize", keep_asked(decide_intent, asked)) and asked:
            # Wake the approvers of that group (core NATS; `writ approvals watch` listens, and the
            # bus lets each approver hear only its own groups).
            intent_id = trigger.envelope.intent_id or ""
            await svc.nc.publish(subjects.approval_notice_subject(asked[0].approvers, intent_id), b"")

    async def candidate(cedar: str) -> tuple[Bundle, list[str]]:
        """The bundle, and what is wrong with it against Writ's Cedar schema (empty: loadable).

        Raises:
            CommandError: ``invalid_policy``, Cedar cannot parse it or a name cannot be a subject token.
        """
        try:
            bundle = compile_bundle(cedar)
            check_names(bundle)
        except PolicyError as exc:
            raise CommandError("invalid_policy", f"the bundle was refused: {exc}") from exc
        await registry.ensure_fresh()
        tools = catalog_tools()
        return bundle, validation_errors(bundle.cedar, bundle.names, cedar_schema(tools))

    async def loadable(cedar: str) -> Bundle:
        """The bundle, if Cedar parses it and it validates against Writ's schema.

        Raises:
            CommandError: ``invalid_policy``, saying what is wrong.
        """
        bundle, errors = await candidate(cedar)
        if errors:
            raise CommandError(
                "invalid_policy",
                "the bundle does not validate against Writ's Cedar schema (see `writ policy schema`): "
                + "; ".join(errors),
            )
        return bundle

    async def load(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, LoadPolicy)
        bundle = await loadable(cmd.cedar)
        if cmd.shadow:
            return await publish_shadow(bundle)
        await follower.ensure_fresh()
        refuse_during_rollout("load a bundle for every agent")
        published = ev.PolicyBundlePublished(policy_digest=bundle.digest, cedar=bundle.cedar, policy_ids=bundle.names)
        await publish_fenced(subjects.POLICY_SUBJECT, published, f"policy:{bundle.digest}", "bundle")
        await redecide_pending()
        return {"policy_digest": bundle.digest, "policy_ids": sorted(bundle.names.values())}

    async def publish_fenced(subject: str, published: ev.Payload, message_id: str, what: str) -> None:
        """Append a bundle fenced on the previous one on ``subject``, so two operators loading at
        once cannot both win, then read it back into this replica's view."""
        last = await last_on_subject(svc.js, subjects.POLICY_STREAM, subject)
        previous = last.seq or 0 if last else 0
        try:
            await svc.append_control(
                subject, published, message_id=f"{message_id}:after:{previous}", expected_last_subject_seq=previous
            )
        except StaleAppend as exc:
            raise CommandError("concurrent_update", f"another {what} was loaded at the same moment; retry") from exc
        await follower.ensure_fresh()

    async def publish_shadow(bundle: Bundle) -> Any:
        published = ev.PolicyShadowPublished(policy_digest=bundle.digest, cedar=bundle.cedar, policy_ids=bundle.names)
        await publish_fenced(subjects.SHADOW_PUBLISHED_SUBJECT, published, f"shadow:{bundle.digest}", "shadow bundle")
        return {"policy_digest": bundle.digest, "policy_ids": sorted(bundle.names.values()), "shadow": True}

    async def shadow_off(_body: dict[str, Any]) -> Any:
        await follower.ensure_fresh()
        if not shadow:
            raise CommandError("no_shadow", "no shadow bundle is being evaluated (`writ policy load FILE --shadow`)")
        digest = shadow[0].digest
        last = await last_on_subject(svc.js, subjects.POLICY_STREAM, subjects.SHADOW_PUBLISHED_SUBJECT)
        await svc.append_control(
            subjects.SHADOW_STOPPED_SUBJECT,
            ev.PolicyShadowStopped(policy_digest=digest),
            message_id=f"shadow-stop:{digest}:{last.seq if last else 0}",
        )
        await follower.ensure_fresh()
        return {"policy_digest": digest}

    async def start_rollout(body: dict[str, Any]) -> Any:
        """Enforce a candidate for a slice of agents, with its triggers declared and checked first."""
        cmd = msgspec.convert(body, StartRollout)
        try:
            spec = parse_spec(**{k: v for k, v in msgspec.structs.asdict(cmd).items() if k != "cedar"})
        except RolloutError as exc:
            raise CommandError("invalid_rollout", str(exc)) from exc
        bundle = await loadable(cmd.cedar)
        await follower.ensure_fresh()
        refuse_during_rollout("start another rollout")
        if not current:
            raise CommandError("no_policy", "no bundle is enforced to fall back to; load one with `writ policy load`")
        if current[0].digest == bundle.digest:
            raise CommandError("already_enforced", f"bundle {bundle.digest} is already enforced for every agent")
        started = ev.PolicyRolloutStarted(
            rollout_id=uuid.uuid4().hex[:12],
            candidate_digest=bundle.digest,
            cedar=bundle.cedar,
            policy_ids=bundle.names,
            previous_digest=current[0].digest,
            percent=spec.percent,
            agents=list(spec.agents),
            triggers=list(spec.triggers),
            promote_after_s=spec.promote_after_s,
            cooldown_s=spec.cooldown_s,
            min_decisions=spec.min_decisions,
        )
        await publish_fenced(subjects.ROLLOUT_STARTED_SUBJECT, started, f"rollout:{bundle.digest}", "rollout")
        return rollout_picture(rollouts.latest, [])

    def refuse_during_rollout(what: str) -> None:
        rollout = rollouts.latest
        if rollout is not None and (rollout.active or rollout.promotion_pending):
            raise CommandError(
                "rollout_in_progress",
                f"rollout {rollout.plan.rollout_id} of {rollout.plan.candidate_digest} is in progress; cannot {what}"
                " until it is promoted or rolled back (`writ policy rollout status`, `writ policy rollout abort`)",
            )

    async def rollout_status(_body: dict[str, Any]) -> Any:
        await follower.ensure_fresh()
        rollout = rollouts.latest
        if rollout is None:
            raise CommandError("no_rollout", "no rollout has started (`writ policy rollout FILE --canary 10%`)")
        live = rollout.active and signals.rollout_id == rollout.plan.rollout_id
        return {
            **rollout_picture(rollout, readings_of(rollout) if live else []),
            "in_breach": {t: at.isoformat().replace("+00:00", "Z") for t, at in signals.watch.items()} if live else {},
            "earlier": [rollout_picture(r, []) for r in reversed(rollouts.ended)],
        }

    async def abort_rollout(_body: dict[str, Any]) -> Any:
        await follower.ensure_fresh()
        rollout = rollouts.latest
        if rollout is None or not rollout.active:
            raise CommandError("no_rollout", "no rollout is in progress")
        readings = readings_of(rollout) if signals.rollout_id == rollout.plan.rollout_id else []
        await end_rollout(rollout, "rolled_back", "aborted by an operator", readings, by="operator")
        ended = rollouts.latest
        if ended is None or ended.ended != "rolled_back":
            raise CommandError("already_promoted", f"rollout {rollout.plan.rollout_id} was promoted first")
        return rollout_picture(ended, [])

    def readings_of(rollout: Rollout) -> list[ev.SignalReading]:
        now = datetime.now(UTC)
        return [read(signals.book, t, now, rollout.plan.min_decisions) for t in rollout.plan.triggers]

    async def end_rollout(
        rollout: Rollout,
        how: Literal["promoted", "rolled_back"],
        reason: str,
        readings: list[ev.SignalReading],
        *,
        trigger: str = "",
        by: Literal["controller", "operator"] = "controller",
    ) -> None:
        """Append the rollout's one ending: its message id is the same whichever it is, so the log
        deduplicates a race (abort against promotion, two replicas), and the fold keeps the first."""
        ended = ending(rollout.plan, how, reason, readings, trigger=trigger, by=by)
        subject = topology.ROUTE[ev.EVENT_TYPE[type(ended)]].subject
        await svc.append_control(subject, ended, message_id=f"rollout-end:{rollout.plan.rollout_id}")
        await follower.ensure_fresh()

    async def publish_promotion(rollout: Rollout) -> None:
        bundle = candidates[rollout.plan.candidate_digest]
        published = ev.PolicyBundlePublished(policy_digest=bundle.digest, cedar=bundle.cedar, policy_ids=bundle.names)
        await publish_fenced(subjects.POLICY_SUBJECT, published, f"policy:{bundle.digest}", "bundle")
        await redecide_pending()

    async def on_observed(msg: Msg) -> None:
        rollout = rollouts.latest
        if rollout is None or not rollout.active or signals.rollout_id != rollout.plan.rollout_id:
            return
        observe(rollout, msg, live=True)

    def observe(rollout: Rollout, msg: Msg, *, live: bool) -> None:
        # A Direct Get reply arrives on an inbox; the event's subject is in its headers.
        subject = msg.subject if live else (msg.headers or {}).get("Nats-Subject", "")
        parts = subject.split(".")
        event_type = topology.TYPE_OF_TOKEN.get(parts[-1]) if len(parts) == 5 else None
        if event_type not in OBSERVED_TYPES or not in_slice(rollout.plan, parts[2]):
            return
        try:
            event = decode(msg.data, subject=subject) if live else stored(msg)
            topology.admit(event)
        except UndecodableEvent:
            return
        assert event_type is not None
        signals.book.observe(event_type, parts[3], parse_time(event.envelope.occurred_at))

    async def read_slice_since_start(rollout: Rollout) -> None:
        """After a restart (or on a replica that saw the start late): the slice's decisions since
        the rollout began, from the log."""
        plan = rollout.plan
        # Only the event types the signals read (about half an intent's events), per named agent if named.
        tokens = [topology.ROUTE[t].token for t in OBSERVED_TYPES]
        wheres = [f"{subjects.INTENT_PREFIX}.{a}.*.{t}" for a in plan.agents or ["*"] for t in tokens]
        for where in wheres:
            msgs = await direct_get_batch(
                svc.nc, subjects.INTENTS_STREAM, where, batch=1024, start_time=rollout.started_at
            )
            for msg in msgs:
                observe(rollout, msg, live=False)

    async def control_rollout() -> None:
        await follower.ensure_fresh()
        rollout = rollouts.latest
        if rollout is None or not (rollout.active or rollout.promotion_pending):
            return
        if rollout.active and signals.reset_for(rollout.plan.rollout_id):
            await read_slice_since_start(rollout)
        now = datetime.now(UTC)
        readings = readings_of(rollout)
        step, signals.watch = next_step(rollout, signals.watch, readings, now)
        match step.action:
            case "roll_back":
                log.warning("policy: rolling back %s: %s", rollout.plan.rollout_id, step.reason)
                await end_rollout(rollout, "rolled_back", step.reason, readings, trigger=step.trigger)
            case "promote":
                await end_rollout(rollout, "promoted", step.reason, readings)
                promoted = rollouts.latest
                if promoted is not None and promoted.promotion_pending:
                    await publish_promotion(promoted)
            case "publish":
                await publish_promotion(rollout)
            case _:
                pass
        longest = max((t.window_s for t in rollout.plan.triggers), default=0.0)
        signals.book.prune(now - timedelta(seconds=longest))

    async def rollout_loop() -> None:
        while True:
            await asyncio.sleep(ROLLOUT_TICK)
            try:
                await control_rollout()
            except Exception:
                log.exception("policy: the rollout controller failed this tick; trying again")

    async def simulate(body: dict[str, Any]) -> Any:
        """The candidate replayed over the recorded intents beside the enforced bundle: changes nothing."""
        cmd = msgspec.convert(body, Simulate)
        bundle, errors = await candidate(cmd.cedar)
        now = datetime.now(UTC)
        try:
            scope = Scope(since=parse_since(cmd.since, now) if cmd.since else None, agent=cmd.agent, tool=cmd.tool)
        except ValueError as exc:
            raise CommandError("invalid_request", str(exc)) from exc
        if cmd.agent is not None:
            require_token(cmd.agent, code="invalid_agent_id", what="agent id")
        await follower.ensure_fresh()
        enforced = current[0] if current else None
        where = f"{subjects.INTENT_PREFIX}.{cmd.agent or '*'}.*.>"
        msgs = await direct_get_batch(svc.nc, subjects.INTENTS_STREAM, where, batch=1024, start_time=scope.since)

        def run() -> dict[str, Any]:
            histories: dict[str, list[StoredEvent]] = {}
            for msg in msgs:
                with contextlib.suppress(UndecodableEvent):
                    event = stored(msg)
                    histories.setdefault(event.subject.rpartition(".")[0], []).append(event)
            views = (fold_intent(events) for events in histories.values())
            return decision_diff(replay(views, enforced, bundle, scope, now=now), examples=max(0, cmd.examples))

        diff = await asyncio.to_thread(run)  # Cedar's CPU off the loop: live decisions go on meanwhile
        return {
            "validation_errors": errors,
            "candidate_digest": bundle.digest,
            "current_digest": enforced.digest if enforced else None,
            "since": scope.since.isoformat().replace("+00:00", "Z") if scope.since else None,
            **diff,
        }

    async def recheck(body: dict[str, Any]) -> Any:
        """Does the permit that authorized this intent still hold under the current bundle? The
        executor asks before a call authorized under an earlier bundle (rate limits are not
        counted again: the call was already counted when it was authorized)."""
        query = msgspec.convert(body, IntentRef)
        await follower.ensure_fresh()
        view = fold_intent((await read_history(svc.nc, query.agent_id, query.intent_id)).events)
        if view.planned is None or view.submitted is None:
            raise CommandError("not_found", f"intent {query.intent_id!r} has no plan to decide on")
        bundle = enforced_for(view.agent_id)
        verdict = decide(view, bundle, now=datetime.now(UTC))
        holds = isinstance(verdict, ev.IntentAuthorized | ev.ApprovalRequested)
        return {
            "holds": holds,
            "policy_digest": bundle.digest if bundle else None,
            "code": "ok" if holds else getattr(verdict, "code", "denied"),
            "reason": "" if holds else getattr(verdict, "reason", ""),
        }

    async def schema(_body: dict[str, Any]) -> Any:
        await registry.ensure_fresh()
        tools = catalog_tools()
        return cedar_schema(tools)

    async def show(_body: dict[str, Any]) -> Any:
        await follower.ensure_fresh()
        if not current:
            raise CommandError("no_policy", "no policy bundle is loaded; load one with `writ policy load FILE`")
        bundle = current[0]
        return {
            "policy_digest": bundle.digest,
            "policy_ids": sorted(bundle.names.values()),
            "cedar": bundle.cedar,
            "shadow_digest": shadow[0].digest if shadow else None,
            "rollout": rollout_picture(rollouts.latest, []) if rollouts.latest and rollouts.latest.active else None,
        }

    async def ping(_body: dict[str, Any]) -> Any:
        return {"service": svc.name, "policy_digest": current[0].digest if current else None}

    async def approver_groups(body: dict[str, Any]) -> Any:
        query = msgspec.convert(body, ApprovalQuery)
        if not query.approver_id:
            raise CommandError("invalid_request", "approver_groups needs an approver_id")
        return list(await groups_of(query.approver_id) or ())

    svc.on_startup(startup)
    svc.on_shutdown(shutdown)
    # Nothing stranded: an open intent past its deadline ends expired, whatever held it up
    # (one with an unanswered call is the executor's to end).
    svc.sweep(sweep_stage)
    svc.consume_intents(subjects.intents_of_type("intent.planned"), on_planned)
    svc.command("decide_approval", decide_approval)
    svc.command("list_approvals", list_approvals)
    svc.command("show_approval", show_approval)
    svc.command("load", load)
    svc.command("show", show)
    svc.command("approver_groups", approver_groups)
    svc.command("recheck", recheck)
    svc.command("schema", schema)
    svc.command("simulate", simulate)
    svc.command("shadow_off", shadow_off)
    svc.command("rollout", start_rollout)
    svc.command("rollout_status", rollout_status)
    svc.command("rollout_abort", abort_rollout)
    # The same, asked by an approver on its own subject: policy knows who asks from the subject.
    svc.approver_command("decide_approval", decide_as)
    svc.approver_command("list_approvals", list_mine)
    svc.approver_command("show_approval", show_mine)
    svc.approver_command("approver_groups", groups_mine)
    svc.command("ping", ping)
    return svc


def under_new_policy(denied: ev.IntentDenied) -> ev.IntentDenied:
    """A denial reached by re-deciding a waiting request under a newly loaded bundle."""
    return msgspec.structs.replace(
        denied, reason=f"{denied.reason} (the policy changed while the call waited for approval)"
    )


def own_query(approver_id: str, body: dict[str, Any]) -> ApprovalQuery:
    """An approver's query; naming anyone else in it is refused, not quietly ignored."""
    query = msgspec.convert(body, ApprovalQuery)
    if query.approver_id is not None and query.approver_id != approver_id:
        raise not_you(approver_id, query.approver_id)
    return query


def not_you(approver_id: str, claimed: str) -> CommandError:
    return CommandError("approver_mismatch", f"this connection speaks for approver {approver_id!r}, not {claimed!r}")


def keep_asked(decide: Decide, asked: list[ev.ApprovalRequested]) -> Decide:
    """``decide``, remembering the approval request among its last decision (to wake approvers)."""

    async def deciding(view: IntentView) -> list[ev.Payload]:
        payloads = list(await decide(view))
        asked[:] = [p for p in payloads if isinstance(p, ev.ApprovalRequested)]
        return payloads

    return deciding


def approval_picture(view: IntentView) -> dict[str, Any]:
    """Everything a person needs to judge the call, and the digest they sign."""
    request, intent, planned = view.approval, view.submitted, view.planned
    assert request is not None and intent is not None and planned is not None
    return {
        "intent_id": view.intent_id,
        "agent_id": view.agent_id,
        "on_behalf_of": intent.on_behalf_of,
        "owner": view.authenticated.owner if view.authenticated else None,
        "tool": f"{planned.server}/{planned.tool}",
        "tool_digest": planned.tool_digest,
        "annotations": msgspec.to_builtins(planned.annotations),
        "arguments": intent.arguments,
        "args_digest": planned.args_digest,
        "policy_digest": request.policy_digest,
        "policy_ids": request.policy_ids,
        "approvers": request.approvers,
        "quorum": request.quorum,
        "owner_may_approve": request.owner_may_approve,
        "granted_by": [g.approver_id for g in view.grants],
        "deadline": intent.deadline,
        "expires_at": request.expires_at,
        "approval_digest": request.approval_digest,
        "status": view.status,
    }


def decision_reply(view: IntentView, payloads: list[ev.Payload]) -> dict[str, Any]:
    """Tell the approver what their decision did."""
    request = view.approval
    assert request is not None
    granted = [g.approver_id for g in view.grants]
    outcome, code, reason = "recorded", "ok", ""
    for payload in payloads:
        match payload:
            case ev.ApprovalRefused():
                outcome, code, reason = "refused", payload.code, payload.reason
                break
            case ev.ApprovalGranted():
                outcome = "granted"
                granted.append(payload.approver_id)
            case ev.IntentAuthorized():
                outcome, reason = "authorized", payload.reasons[0]
            case ev.IntentDenied():
                outcome, code, reason = "denied", payload.code, payload.reason
            case _:
                pass
    return {"outcome": outcome, "code": code, "reason": reason, "granted_by": granted, "quorum": request.quorum}


def rollout_picture(rollout: Rollout | None, readings: list[ev.SignalReading]) -> dict[str, Any]:
    """A rollout as an operator reads it: the slice, the triggers, how it ended and why."""
    assert rollout is not None
    plan, end = rollout.plan, rollout.end
    status = "in_progress" if rollout.active else rollout.ended
    return {
        "rollout_id": plan.rollout_id,
        "status": status,
        "candidate_digest": plan.candidate_digest,
        "previous_digest": plan.previous_digest,
        "percent": plan.percent,
        "agents": plan.agents,
        "triggers": [t.text for t in plan.triggers],
        "promote_after_s": plan.promote_after_s,
        "cooldown_s": plan.cooldown_s,
        "min_decisions": plan.min_decisions,
        "started_at": rollout.started_at.isoformat().replace("+00:00", "Z"),
        "ended_at": rollout.ended_at.isoformat().replace("+00:00", "Z") if rollout.ended_at else None,
        "reason": end.reason if end else "",
        "trigger": end.trigger if isinstance(end, ev.PolicyRolloutRolledBack) else "",
        "by": end.by if isinstance(end, ev.PolicyRolloutRolledBack) else ("controller" if end else ""),
        "signals": msgspec.to_builtins(end.signals if end else readings),
    }

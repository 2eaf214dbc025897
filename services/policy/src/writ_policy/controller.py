"""The canary rollout controller: start, status and abort for operators, and a loop that reads the
slice's signals every tick and rolls back, promotes or finishes a promotion. Thin adapters: the
rules are in :mod:`writ_policy.rollout`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from writ_common import events as ev
from writ_common import subjects, topology
from writ_common.bus import direct_get_batch, stored
from writ_common.commands import CommandError, granted, refuse_if
from writ_common.control import ControlFollower
from writ_common.envelope import UndecodableEvent, decode, parse_time
from writ_common.service import Service
from writ_policy import rollout as rules
from writ_policy.loading import Bundles
from writ_policy.rollout import OBSERVED_TYPES, Rollout, RolloutError, Signals, rollout_picture
from writ_policy.state import PolicyState

log = logging.getLogger(__name__)

ROLLOUT_TICK = 1.0  # how often the rollout controller reads its signals


class StartRollout(msgspec.Struct, kw_only=True):
    cedar: str
    canary: str | None = None  # "10%"
    agents: list[str] = []
    rollback_if: list[str] = []  # "denial_rate>0.2 over 5m for 30s"
    promote_after: str | None = None  # "30m"
    cooldown: str | None = None  # "60s"
    min_decisions: int = 5


class RolloutController:
    """Owns the slice's signals (its decisions since the rollout began, and the hysteresis memory);
    the rollout itself is folded from the policy stream into :class:`PolicyState`."""

    def __init__(self, svc: Service, state: PolicyState, policies: ControlFollower, bundles: Bundles) -> None:
        self.svc = svc
        self.state = state
        self.policies = policies
        self.bundles = bundles
        self.signals = Signals()
        self.tasks: list[asyncio.Task[None]] = []
        # The slice's decisions as they happen, heard only while a rollout is active: every
        # governed call's events would otherwise come here for nothing.
        self.listening: list[Subscription] = []

    async def start(self) -> None:
        self.tasks.append(asyncio.create_task(self.loop(), name="rollout-controller"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.stop_listening()

    async def listen(self) -> None:
        if not self.listening:
            for event_type in OBSERVED_TYPES:
                self.listening.append(
                    await self.svc.nc.subscribe(subjects.intents_of_type(event_type), cb=self.on_observed)
                )

    async def stop_listening(self) -> None:
        subs, self.listening = self.listening, []
        for sub in subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    # -- commands -------------------------------------------------------------------------------

    async def start_rollout(self, body: dict[str, Any]) -> Any:
        """Enforce a candidate for a slice of agents, with its triggers declared and checked first."""
        cmd = msgspec.convert(body, StartRollout)
        try:
            spec = rules.parse_spec(**{k: v for k, v in msgspec.structs.asdict(cmd).items() if k != "cedar"})
        except RolloutError as exc:
            raise CommandError("invalid_rollout", str(exc)) from exc
        bundle = await self.bundles.loadable(cmd.cedar)
        await self.policies.ensure_fresh()
        refuse_if(rules.blocks(self.state.rollouts, "start another rollout"))
        refuse_if(rules.cannot_start(self.state.current_digest, bundle.digest))
        assert self.state.current is not None
        started = ev.PolicyRolloutStarted(
            rollout_id=uuid.uuid4().hex[:12],
            candidate_digest=bundle.digest,
            cedar=bundle.cedar,
            policy_ids=bundle.names,
            previous_digest=self.state.current.digest,
            percent=spec.percent,
            agents=list(spec.agents),
            triggers=list(spec.triggers),
            promote_after_s=spec.promote_after_s,
            cooldown_s=spec.cooldown_s,
            min_decisions=spec.min_decisions,
        )
        await self.bundles.publish_fenced(
            subjects.ROLLOUT_STARTED_SUBJECT, started, f"rollout:{bundle.digest}", "rollout"
        )
        return rollout_picture(self.state.rollouts.latest, [])

    async def status(self, _body: dict[str, Any]) -> Any:
        await self.policies.ensure_fresh()
        rollout = granted(rules.latest_or_refusal(self.state.rollouts))
        live = rollout.active and self.signals.rollout_id == rollout.plan.rollout_id
        watch = self.signals.watch
        return {
            **rollout_picture(rollout, self.readings_of(rollout) if live else []),
            "in_breach": {t: at.isoformat().replace("+00:00", "Z") for t, at in watch.items()} if live else {},
            "earlier": [rollout_picture(r, []) for r in reversed(self.state.rollouts.ended)],
        }

    async def abort(self, _body: dict[str, Any]) -> Any:
        await self.policies.ensure_fresh()
        rollout = granted(rules.abortable(self.state.rollouts))
        readings = self.readings_of(rollout) if self.signals.rollout_id == rollout.plan.rollout_id else []
        await self.end(rollout, "rolled_back", "aborted by an operator", readings, by="operator")
        refuse_if(rules.abort_lost(self.state.rollouts, rollout))
        return rollout_picture(self.state.rollouts.latest, [])

    # -- the control loop -----------------------------------------------------------------------

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(ROLLOUT_TICK)
            try:
                await self.tick()
            except Exception:
                log.exception("policy: the rollout controller failed this tick; trying again")

    async def tick(self) -> None:
        await self.policies.ensure_fresh()
        rollout = rules.in_progress(self.state.rollouts)
        if rollout is None or not rollout.active:
            await self.stop_listening()
        else:
            # Listening first, then reading the log since the start: a decision made in between
            # is seen twice, never missed (a sample takes the same event alike twice).
            await self.listen()
            if self.signals.reset_for(rollout.plan.rollout_id):
                await self.read_slice_since_start(rollout)
        if rollout is None:
            return
        now = datetime.now(UTC)
        readings = self.readings_of(rollout)
        step, self.signals.watch = rules.next_step(rollout, self.signals.watch, readings, now)
        match step.action:
            case "roll_back":
                log.warning("policy: rolling back %s: %s", rollout.plan.rollout_id, step.reason)
                await self.end(rollout, "rolled_back", step.reason, readings, trigger=step.trigger)
            case "promote":
                await self.end(rollout, "promoted", step.reason, readings)
                promoted = self.state.rollouts.latest
                if promoted is not None and promoted.promotion_pending:
                    await self.publish_promotion(promoted)
            case "publish":
                await self.publish_promotion(rollout)
            case _:
                pass
        longest = max((t.window_s for t in rollout.plan.triggers), default=0.0)
        self.signals.book.prune(now - timedelta(seconds=longest))

    def readings_of(self, rollout: Rollout) -> list[ev.SignalReading]:
        now = datetime.now(UTC)
        book, least = self.signals.book, rollout.plan.min_decisions
        alone = rules.one_agent_counts(rollout.plan)
        return [rules.read(book, t, now, least, one_agent_counts=alone) for t in rollout.plan.triggers]

    async def end(
        self,
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
        ended = rules.ending(rollout.plan, how, reason, readings, trigger=trigger, by=by)
        subject = topology.ROUTE[ev.EVENT_TYPE[type(ended)]].subject
        await self.svc.append_control(subject, ended, message_id=f"rollout-end:{rollout.plan.rollout_id}")
        await self.policies.ensure_fresh()

    async def publish_promotion(self, rollout: Rollout) -> None:
        await self.bundles.publish(self.state.candidates[rollout.plan.candidate_digest])

    # -- the slice's signals ----------------------------------------------------------------------

    async def on_observed(self, msg: Msg) -> None:
        rollout = self.state.rollouts.latest
        if rollout is None or not rollout.active or self.signals.rollout_id != rollout.plan.rollout_id:
            return
        self.observe(rollout, msg, live=True)

    def observe(self, rollout: Rollout, msg: Msg, *, live: bool) -> None:
        # A Direct Get reply arrives on an inbox; the event's subject is in its headers.
        subject = msg.subject if live else (msg.headers or {}).get("Nats-Subject", "")
        seen = rules.observed_on(subject, rollout.plan)
        if seen is None:
            return
        try:
            event = decode(msg.data, subject=subject) if live else stored(msg)
            topology.admit(event)
        except UndecodableEvent:
            return
        event_type, intent_id, agent_id = seen
        self.signals.book.observe(event_type, intent_id, parse_time(event.envelope.occurred_at), agent_id)

    async def read_slice_since_start(self, rollout: Rollout) -> None:
        """After a restart (or on a replica that saw the start late): the slice's decisions since
        the rollout began, from the log."""
        plan = rollout.plan
        # Only the event types the signals read (about half an intent's events), per named agent if named.
        tokens = [topology.ROUTE[t].token for t in OBSERVED_TYPES]
        wheres = [f"{subjects.INTENT_PREFIX}.{a}.*.{t}" for a in plan.agents or ["*"] for t in tokens]
        for where in wheres:
            msgs = await direct_get_batch(
                self.svc.nc, subjects.INTENTS_STREAM, where, batch=1024, start_time=rollout.started_at
            )
            for msg in msgs:
                self.observe(rollout, msg, live=False)

"""Policy's stage: ``intent.planned`` -> authorized, denied or approval.requested, counted against
the permit's rate limits; and ``recheck``, the executor's question before a call authorized
under an earlier bundle. Thin adapters: the rules are in :mod:`writ_policy.domain`."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg

from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import read_history
from writ_common.commands import granted
from writ_common.control import ControlFollower
from writ_common.envelope import StoredEvent
from writ_common.errors import Refusal
from writ_common.fold import IntentView, fold_intent
from writ_common.intent_consumer import Redeliver
from writ_common.service import Service
from writ_policy import domain
from writ_policy.domain import RateExceeded, Uncounted
from writ_policy.ratelimit import RateLimiter, RateLimitUnavailable
from writ_policy.state import PolicyState
from writ_policy.whatif import shadow_decided

log = logging.getLogger(__name__)

RATE_STORE_RETRY = 2.0  # seconds between asks while Redis is away


class IntentRef(msgspec.Struct, kw_only=True):
    agent_id: str
    intent_id: str


class Decisions:
    """Decides each planned intent under the bundle enforced for its agent (shadow beside it)."""

    def __init__(self, svc: Service, state: PolicyState, policies: ControlFollower, limiter: RateLimiter) -> None:
        self.svc = svc
        self.state = state
        self.policies = policies
        self.limiter = limiter

    async def on_planned(self, trigger: StoredEvent, _raw: Msg) -> None:
        group: str | None = None  # the approvers asked by the decision appended, if any

        async def deciding(view: IntentView) -> list[ev.Payload]:
            nonlocal group
            payloads = await self.decide_intent(view)
            group = next((p.group for p in payloads if isinstance(p, ev.ApprovalRequested)), None)
            return payloads

        appended = await self.svc.run_stage(trigger, "authorize", deciding)
        if appended and group is not None:
            # Wake the approvers of that group (core NATS; `writ approvals watch` listens, and the
            # bus lets each approver hear only its own groups).
            intent_id = trigger.envelope.intent_id or ""
            await self.svc.nc.publish(subjects.approval_notice_subject(group, intent_id), b"")

    async def decide_intent(self, view: IntentView) -> list[ev.Payload]:
        if not domain.needs_decision(view):
            return []
        bundle = self.state.enforced_for(view.agent_id)
        now = datetime.now(UTC)
        decision = domain.decide(view, bundle, now=now)
        if isinstance(decision, ev.IntentDenied):
            # A denial is final (an allow is rechecked by the executor): it must come from the
            # bundle in force, not from this replica's fold a nudge behind a load made a moment ago.
            await self.policies.ensure_fresh()
            if (fresh := self.state.enforced_for(view.agent_id)) is not bundle:
                bundle, decision = fresh, domain.decide(view, fresh, now=now)
        # Recorded before the decision, so nothing waits on it and a retry dedupes it.
        shadow = self.state.shadow
        beside = [shadow_decided(view, decision, bundle, shadow, now=now)] if shadow else []
        limits = domain.rate_limits_for(decision, bundle)
        if not limits:
            return [*beside, decision]
        outcome = domain.counted(view, decision, await self.count(view, limits))
        if isinstance(outcome, Refusal):
            # Fail closed: an uncounted call is not authorized; the intent waits (or expires).
            log.warning("policy: not deciding %s yet: %s", view.intent_id, outcome.reason)
            raise Redeliver(RATE_STORE_RETRY, outcome.reason)
        return [*beside, outcome]

    async def count(self, view: IntentView, limits: list[domain.RateLimit]) -> RateExceeded | Uncounted | None:
        """Count the call in every window of its permits (Redis), or say why it could not be."""
        assert view.agent_id and view.intent_id and view.planned
        try:
            return await self.limiter.admit(
                limits,
                agent_id=view.agent_id,
                tool=f"{view.planned.server}/{view.planned.tool}",
                intent_id=view.intent_id,
            )
        except RateLimitUnavailable as exc:
            return Uncounted(str(exc))

    async def recheck(self, body: dict[str, Any]) -> Any:
        """Does the permit that authorized this intent still hold under the current bundle? The
        executor asks before a call authorized under an earlier bundle."""
        query = msgspec.convert(body, IntentRef)
        await self.policies.ensure_fresh()
        view = fold_intent((await read_history(self.svc.nc, query.agent_id, query.intent_id)).events)
        return granted(
            domain.recheck(view, query.intent_id, self.state.enforced_for(view.agent_id), now=datetime.now(UTC))
        )

"""The driver of the admission loop (its rules: :mod:`writ_executor.admission_tuning`): every tick,
each route's move of its adaptive limit, or the verdict on its last one, appended to the executor
stream; the limits recorded there are the ones every replica (and a restarted one) resumes from.
Nothing here runs per call: the calls only feed the route book in memory."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from writ_common import events as ev
from writ_common import subjects
from writ_common.envelope import StoredEvent
from writ_common.service import Service
from writ_common.settings import WritSettings
from writ_executor.admission import Admission, limiter_config
from writ_executor.admission_tuning import (
    AdmissionRecord,
    AdmissionTuning,
    adopted,
    apply_admission_event,
    memory_bounds,
    next_changes,
    route_of,
)
from writ_executor.limiter import RouteLimiter

log = logging.getLogger(__name__)


def admission_tuning(settings: WritSettings) -> AdmissionTuning:
    config = limiter_config(settings)
    return AdmissionTuning(
        initial=min(config.maximum, max(config.minimum, config.initial)),
        minimum=config.minimum,
        maximum=config.maximum,
        max_step=settings.admission_max_step,
        verify_s=settings.admission_verify_seconds,
        cooldown_s=settings.admission_cooldown_seconds,
        tolerance=settings.admission_verify_tolerance,
    )


def proposal(limiter: RouteLimiter, recorded: int) -> int:
    """The move of the route's limit to record: where the limiter has it, except that a server's
    declared capacity capping it is no move of the loop's (recording it would only be reverted)."""
    if limiter.capacity is not None and limiter.limit >= limiter.maximum:
        return max(recorded, limiter.limit)
    return limiter.limit


class AdmissionLoop:
    """The routes' recorded limits, folded from the executor stream, and the tick that records moves."""

    def __init__(self, svc: Service, settings: WritSettings, admission: Admission) -> None:
        self.svc = svc
        self.admission = admission
        self.tuning = admission_tuning(settings)
        self.record = AdmissionRecord()
        self.follower = svc.follow(subjects.EXECUTOR_STREAM, self.on_event)
        self.enabled = settings.admission

    def on_event(self, event: StoredEvent) -> None:
        route = apply_admission_event(self.record, event)
        if route is not None:
            self.admission.adopt(route, adopted(self.admission.limits.of(route).limit, event.payload))

    async def tune_once(self) -> None:
        """One step of the loop: read the routes, ask the rules, append their changes, then bound
        each route's limiter by what is recorded now."""
        await self.follower.ensure_fresh()
        now = datetime.now(UTC)
        routes = self.admission.limits.routes
        proposed = {
            route: proposal(limiter, self.record.limit(route, self.tuning)) for route, limiter in routes.items()
        }
        targets = {route: limiter.target_ms for route, limiter in routes.items()}
        changes = next_changes(self.record, proposed, self.admission.book, self.tuning, now=now, targets=targets)
        self.admission.book.prune(now - timedelta(seconds=4 * self.tuning.verify_s))
        for change in changes:
            await self.append(change)
        if changes:
            await self.follower.ensure_fresh()
        for route, limiter in routes.items():
            limiter.floor, limiter.ceiling = memory_bounds(self.record, route, self.tuning, now)

    async def append(self, change: ev.AdmissionAdjusted | ev.AdmissionVerified | ev.AdmissionReverted) -> None:
        route = route_of(change.server, change.tool)
        entry = self.record.routes.get(route)
        event_type = ev.EVENT_TYPE[type(change)]
        subject = subjects.admission_subject(change.server, event_type.rpartition("_")[2])
        log.warning("executor: %s: %s", event_type, change.reason)
        await self.svc.append_control(
            subject, change, message_id=f"admission:{route}:after:{entry.seq if entry else 0}"
        )

    def wire(self) -> None:
        if self.enabled:
            self.svc.every("admission loop", min(1.0, self.tuning.verify_s / 3), self.tune_once)

"""The driver of the executor's concurrency loop (its rules: :mod:`writ_executor.tuning`): each
server's slots, the calls they ran, and every tick the rule's change appended to the executor
stream, from which every replica folds the limits in force."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from writ_common import events as ev
from writ_common import subjects
from writ_common.envelope import StoredEvent
from writ_common.service import Service
from writ_common.settings import WritSettings
from writ_executor.slots import ServerSlots
from writ_executor.tuning import CallBook, Limits, Tuning, apply_limit_event, next_change, slot_limits

log = logging.getLogger(__name__)

TUNE_TICK = 1.0  # seconds between two looks of the concurrency loop


class ConcurrencyTuner:
    """Per-server slots, the call book the loop reads, and the limits folded from its events."""

    def __init__(self, svc: Service, settings: WritSettings) -> None:
        self.svc = svc
        per_server = settings.executor_per_server
        self.slots = ServerSlots(per_server)
        self.tuning = Tuning(
            floor=per_server,
            ceiling=max(per_server, settings.executor_per_server_max or 0),
            window_s=settings.tuning_window,
            verify_s=settings.tuning_window,
        )
        self.limits = Limits()  # the loop's changes, and the one awaiting its verdict
        self.calls = CallBook()
        self.follower = svc.follow(subjects.EXECUTOR_STREAM, self.on_limit)

    def on_limit(self, event: StoredEvent) -> None:
        apply_limit_event(self.limits, event)
        self.slots.limits = slot_limits(self.limits, self.tuning)

    async def tune_once(self) -> None:
        """One step of the loop: read the calls, ask the rule, append its change."""
        await self.follower.ensure_fresh()
        now = datetime.now(UTC)
        change = next_change(self.limits, self.calls, self.tuning, now)
        self.calls.prune(now - timedelta(seconds=4 * self.tuning.window_s))
        if change is None:
            return
        event_type = ev.EVENT_TYPE[type(change)]
        subject = subjects.limit_subject(change.server, event_type.rpartition("_")[2])
        log.warning("executor: %s: %s", event_type, change.reason)
        await self.svc.append_control(subject, change, message_id=f"limit:{change.server}:after:{self.limits.seq}")
        await self.follower.ensure_fresh()

    def wire(self) -> None:
        if self.tuning.enabled:
            self.svc.every("concurrency loop", TUNE_TICK, self.tune_once)

"""Admission control in the executor: a first attempt whose route (``server/tool``) is at its
adaptive limit ends at once as ``execution.failed{code=overloaded}`` with a retry-after, so it gets
its receipt like any other intent and nothing waits in an unbounded queue. The limits themselves
are in ``limiter`` (pure); this module counts, logs and builds the answer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from writ_common import events as ev
from writ_common import metrics
from writ_common.settings import WritSettings
from writ_executor.admission_tuning import RouteBook
from writ_executor.limiter import Adjustment, LimiterConfig, RouteLimiter, RouteLimits

log = logging.getLogger(__name__)


def limiter_config(settings: WritSettings) -> LimiterConfig:
    # A route never has more calls in flight than its server may run: the server's ceiling when the
    # concurrency loop may raise it (under its floor, a route could never show the loop saturation).
    per_server = max(settings.executor_per_server, settings.executor_per_server_max or 0)
    maximum = min(settings.admission_max_limit, per_server)
    return LimiterConfig(
        initial=settings.admission_initial_limit,
        minimum=min(settings.admission_min_limit, maximum),
        maximum=maximum,
        tolerance=settings.admission_tolerance,
        slack_ms=settings.admission_slack_ms,
        backoff=settings.admission_backoff,
        window_s=settings.admission_window_seconds,
        streak=settings.admission_streak,
        retry_after_min_ms=settings.admission_retry_after_min_ms,
    )


def overloaded(route: str, limit: int, retry_after_ms: int) -> ev.ExecutionFailed:
    """The answer to a call its route had no room for: it did not run; come back later."""
    return ev.ExecutionFailed(
        attempt=0,
        retryable=True,
        code="overloaded",
        reason=(
            f"overloaded: {route} has {limit} {'call' if limit == 1 else 'calls'} in flight, its limit now;"
            " the call did not run;"
            f" retry after {retry_after_ms} ms"
        ),
        result={"retry_after_ms": retry_after_ms, "route": route, "limit": limit},
    )


@dataclass
class Ticket:
    """One admitted call on ``limiter``'s route; ``rtt_ms``: from the request sent on a ready
    session to the answer (or failure); None when it was never sent (that says nothing about the
    route's latency)."""

    limiter: RouteLimiter
    token: int
    rtt_ms: float | None = None
    _sent_at: float | None = None

    @property
    def route(self) -> str:
        return self.limiter.route

    def sent(self) -> None:
        self._sent_at = time.perf_counter()
        self.limiter.sent(self.token, time.monotonic())

    def received(self) -> None:
        if self._sent_at is not None:
            self.rtt_ms = (time.perf_counter() - self._sent_at) * 1000


class Admission:
    """Tickets per route. A call that finds its route full is answered ``overloaded`` at once when
    the route is congested (latency cut its limit lately, or a call in flight is past the bound) or
    has no room for a queue (its calls take longer than the slack: one call behind another already
    breaks the bound): waiting would only make it, and every call behind it, slower. Otherwise it
    waits in place for a freed place, at most the room and half a typical call (capped at
    ``admission_max_wait_ms``); past that, unless the route has become congested meanwhile, it
    waits its turn in the stream (a burst on a healthy route, the backlog a restarted executor
    finds)."""

    def __init__(self, settings: WritSettings) -> None:
        self.enabled = settings.admission
        self.max_wait_ms = settings.admission_max_wait_ms
        self.limits = RouteLimits(limiter_config(settings))
        self.book = RouteBook()  # what the admission loop (admission_loop) records and verifies by
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self._tokens = itertools.count(1)

    async def admit(self, server: str, tool: str, capacity: int | None = None) -> Ticket | ev.ExecutionFailed | None:
        """A ticket for the call; or the ``overloaded`` answer to record (the route had no place for
        it and is congested, or cannot hold a queue within its bound); or None: the route is full
        but healthy, so the call waits its turn in the stream. ``capacity``: the most calls the
        server takes at once, as declared at its registration. Admission off: always a ticket."""
        route = f"{server}/{tool}"
        limiter = self.limits.of(route)
        limiter.declare(capacity)
        if not limiter.try_acquire():
            if not self.enabled:
                limiter.in_flight += 1  # not enforced: still measured, so the limit is observable
            elif not await self._wait_for_place(route, limiter):
                if not limiter.congested(time.monotonic()) and limiter.queue_room_ms() != 0.0:
                    return None
                metrics.OVERLOADED.labels(route).inc()
                self.book.record_refused(route, datetime.now(UTC))
                return overloaded(route, limiter.limit, limiter.retry_after_ms())
        metrics.ADMISSION_IN_FLIGHT.labels(route).set(limiter.in_flight)
        metrics.ADMISSION_LIMIT.labels(route).set(limiter.limit)
        return Ticket(limiter, next(self._tokens))

    def release(self, ticket: Ticket) -> None:
        limiter = ticket.limiter
        if ticket.rtt_ms is not None and self.enabled:
            self.book.record_call(ticket.route, datetime.now(UTC), ticket.rtt_ms, limiter.in_flight)
        adjustment = limiter.release(ticket.rtt_ms, time.monotonic(), token=ticket.token)
        metrics.ADMISSION_IN_FLIGHT.labels(ticket.route).set(limiter.in_flight)
        if adjustment is not None:
            record(adjustment)
        waiters = self._waiters.get(ticket.route)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def adopt(self, route: str, limit: int) -> None:
        """Set the route's limit to one the admission loop recorded (or a restart found recorded)."""
        limiter = self.limits.of(route)
        limiter.limit = limiter.clamp(limit)
        metrics.ADMISSION_LIMIT.labels(route).set(limiter.limit)

    def wait_ms(self, limiter: RouteLimiter) -> float:
        """How long a call that found its route full may wait in place for a place: not at all on
        a congested route; else half a typical call, within the route's room for a queue."""
        if limiter.congested(time.monotonic()):
            return 0.0
        wait = min(limiter.retry_after_ms() / 2, self.max_wait_ms)
        room = limiter.queue_room_ms()
        return wait if room is None else min(wait, room)

    async def _wait_for_place(self, route: str, limiter: RouteLimiter) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_ms(limiter) / 1000
        waiters = self._waiters.setdefault(route, deque())
        while (remaining := deadline - loop.time()) > 0:
            waiter: asyncio.Future[None] = loop.create_future()
            waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)
            if not waiter.done():
                waiter.cancel()
            if limiter.try_acquire():
                return True
        return False


def record(adjustment: Adjustment) -> None:
    metrics.ADMISSION_LIMIT.labels(adjustment.route).set(adjustment.new)
    metrics.ADMISSION_ADJUSTMENTS.labels(adjustment.route, adjustment.direction).inc()
    log.info("admission %s: limit %d -> %d (%s)", adjustment.route, adjustment.old, adjustment.new, adjustment.signal)

"""Admission control in the executor: a first attempt whose route (``server/tool``) is at its
adaptive limit ends at once as ``execution.failed{code=overloaded}`` with a retry-after, so it gets
its receipt like any other intent and nothing waits in an unbounded queue. The limits themselves
are in ``limiter`` (pure); this module counts, logs and builds the answer."""

from __future__ import annotations

import asyncio
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
from writ_executor.fair_share import FairShare
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


def overloaded(
    route: str, limit: int, retry_after_ms: int, *, held: int | None = None, share: int | None = None
) -> ev.ExecutionFailed:
    """The answer to a call its route had no room for: it did not run; come back later. ``held``
    and ``share``: a place was free, but other agents calling the route were due it."""
    calls = "call" if limit == 1 else "calls"
    if held is not None and share is not None:
        why = (
            f"{route} takes {limit} {calls} at once, shared by the agents calling it;"
            f" this agent has {held} in flight (its share: {share}), and another agent is due the next place"
        )
        result = {"retry_after_ms": retry_after_ms, "route": route, "limit": limit, "held": held, "share": share}
    else:
        why = f"{route} has {limit} {calls} in flight, its limit now"
        result = {"retry_after_ms": retry_after_ms, "route": route, "limit": limit}
    return ev.ExecutionFailed(
        attempt=0,
        retryable=True,
        code="overloaded",
        reason=f"overloaded: {why}; the call did not run; retry after {retry_after_ms} ms",
        result=result,
    )


@dataclass
class Ticket:
    """One admitted call on ``limiter``'s route; ``rtt_ms``: from the request sent on a ready
    session to the answer (or failure); None when it was never sent (that says nothing about the
    route's latency)."""

    limiter: RouteLimiter
    token: int
    agent: str = ""
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


@dataclass(eq=False)
class Waiter:
    """A call waiting in place for a place on its route; ``placed``: one was handed to it."""

    agent: str
    placed: asyncio.Future[None]


class Admission:
    """Tickets per route. The route's places are shared between the agents that want them
    (``fair_share``): one agent's many calls do not keep another's out. A call that finds its route
    full (or whose free places other agents are due) is answered ``overloaded`` at once when the
    route is congested (latency cut its limit lately, or a call in flight is past the bound) or
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
        self.shares: dict[str, FairShare] = {}
        self._waiters: dict[str, deque[Waiter]] = {}
        self._tokens = itertools.count(1)

    async def admit(
        self, server: str, tool: str, capacity: int | None = None, *, agent: str = ""
    ) -> Ticket | ev.ExecutionFailed | None:
        """A ticket for ``agent``'s call; or the ``overloaded`` answer to record (the route had no
        place for it and is congested, or cannot hold a queue within its bound); or None: the route
        is full but healthy, so the call waits its turn in the stream. ``capacity``: the most calls
        the server takes at once, as declared at its registration. Admission off: always a ticket."""
        route = f"{server}/{tool}"
        limiter = self.limits.of(route)
        limiter.declare(capacity)
        share = self.shares.setdefault(route, FairShare())
        if not self._take(route, limiter, agent):
            if not self.enabled:
                limiter.in_flight += 1  # not enforced: still measured, so the limit is observable
            elif not await self._wait_for_place(route, limiter, agent):
                now = time.monotonic()
                deferred = limiter.in_flight < limiter.limit  # a place was free, but another agent was due it
                held, fair = share.held[agent], share.share(limiter.limit, now, self._waiting_agents(route), agent)
                if deferred:
                    metrics.SHARE_DEFERRALS.labels("route", route).inc()
                if limiter.queue_room_ms() == 0.0:
                    # Its calls outlast the slack: a call is refused rather than kept waiting, so
                    # the place it is due is kept until it comes back. Not on a route whose calls
                    # are short: there a call waits in place for its turn, and a place kept idle
                    # for a caller on its way back would cost more calls than it gives.
                    share.wanted(agent, now, limiter.retry_after_ms() / 1000)
                elif not limiter.congested(now):
                    return None
                metrics.OVERLOADED.labels(route).inc()
                self.book.record_refused(route, datetime.now(UTC))
                if deferred:
                    return overloaded(route, limiter.limit, limiter.retry_after_ms(), held=held, share=fair)
                return overloaded(route, limiter.limit, limiter.retry_after_ms())
        share.took(agent, time.monotonic())
        metrics.ADMISSION_IN_FLIGHT.labels(route).set(limiter.in_flight)
        metrics.ADMISSION_LIMIT.labels(route).set(limiter.limit)
        return Ticket(limiter, next(self._tokens), agent)

    def release(self, ticket: Ticket) -> None:
        limiter = ticket.limiter
        if ticket.rtt_ms is not None and self.enabled:
            self.book.record_call(ticket.route, datetime.now(UTC), ticket.rtt_ms, limiter.in_flight)
        adjustment = limiter.release(ticket.rtt_ms, time.monotonic(), token=ticket.token)
        self.shares[ticket.route].gave_back(ticket.agent)
        metrics.ADMISSION_IN_FLIGHT.labels(ticket.route).set(limiter.in_flight)
        if adjustment is not None:
            record(adjustment)
        self._hand_over(ticket.route, limiter)

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

    def _waiting_agents(self, route: str) -> list[str]:
        return [w.agent for w in self._waiters.get(route, ())]

    def _take(self, route: str, limiter: RouteLimiter, agent: str) -> bool:
        """A free place, if there is one ``agent`` may take now."""
        waiting = self._waiting_agents(route)
        if not self.shares[route].may_take(agent, limiter.limit, limiter.in_flight, time.monotonic(), waiting):
            return False
        return limiter.try_acquire()

    def _hand_over(self, route: str, limiter: RouteLimiter) -> None:
        """Free places go straight to waiting calls (the fewest held first), so a call arriving
        meanwhile cannot take a place a waiting agent is due."""
        waiters = self._waiters.get(route)
        share = self.shares[route]
        while waiters and limiter.in_flight < limiter.limit:
            chosen = share.next_of([w.agent for w in waiters], limiter.limit, limiter.in_flight, time.monotonic())
            if chosen is None:
                return
            waiter = waiters[chosen]
            del waiters[chosen]
            limiter.in_flight += 1  # taken on its behalf: it owns the place from here
            waiter.placed.set_result(None)

    async def _wait_for_place(self, route: str, limiter: RouteLimiter, agent: str) -> bool:
        """Wait in place; True: a freed place was handed to this call."""
        wait_s = self.wait_ms(limiter) / 1000
        if wait_s <= 0:
            return False
        waiter = Waiter(agent, asyncio.get_running_loop().create_future())
        waiters = self._waiters.setdefault(route, deque())
        waiters.append(waiter)
        try:
            await asyncio.wait({waiter.placed}, timeout=wait_s)
        except BaseException:
            if waiter.placed.done():  # handed a place as this call was cancelled: give it back
                limiter.in_flight -= 1
                self._hand_over(route, limiter)
            raise
        finally:
            if not waiter.placed.done():
                waiter.placed.cancel()
                waiters.remove(waiter)
        return not waiter.placed.cancelled()


def record(adjustment: Adjustment) -> None:
    metrics.ADMISSION_LIMIT.labels(adjustment.route).set(adjustment.new)
    metrics.ADMISSION_ADJUSTMENTS.labels(adjustment.route, adjustment.direction).inc()
    log.info("admission %s: limit %d -> %d (%s)", adjustment.route, adjustment.old, adjustment.new, adjustment.signal)

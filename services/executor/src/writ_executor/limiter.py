"""An adaptive concurrency limit per route (``server/tool``), driven by how long its calls take. Pure.

AIMD as in Netflix's concurrency-limits, with latency as the congestion signal in place of drops,
and a cut sized by the latency gradient as in their Gradient limiter. A call that took longer than
the bound (``tolerance`` times the route's baseline, and at least ``slack_ms`` above it) says calls
are queueing somewhere (the tool server, its session, this replica's loop) once ``streak`` calls
in a row say so: the limit becomes the calls in use (or the limit, if lower) times bound / latency,
kept between 0.5 and ``backoff`` (and at least one less), at most once per baseline round trip, so
one slow wave is not one cut per call in it. A call within the bound, finished while at least half
the limit was in use, adds one (a route used far below its limit proves nothing about a higher
one). A route is *congested* while latency holds its limit below its maximum, and while calls in
flight past the bound hold half its places: the queue shows before they end.

The limit stays within ``[minimum, maximum]``, the route's server's declared ``capacity`` (the
most calls it takes at once, when its operator said so at registration), and the ``floor`` and
``ceiling`` the admission loop (``admission_tuning``) sets while it records and verifies the
route's changes.

The baseline is the fastest call of the current and the previous window (``window_s``): it
follows a route that has become slower for good instead of shedding it forever, and comes back
down as soon as a fast call is seen again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LimiterConfig:
    """Bounds and gains of every route's limit (the executor takes them from its settings)."""

    initial: int = 32
    minimum: int = 1
    maximum: int = 32
    tolerance: float = 1.5
    slack_ms: float = 250.0
    backoff: float = 0.9
    window_s: float = 30.0
    streak: int = 3
    retry_after_min_ms: int = 100
    retry_after_max_ms: int = 30_000

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"limits need 1 <= minimum <= maximum, not {self.minimum}..{self.maximum}")
        if not 0 < self.backoff < 1:
            raise ValueError(f"backoff must be between 0 and 1, not {self.backoff}")
        if self.tolerance < 1:
            raise ValueError(f"tolerance must be at least 1, not {self.tolerance}")


@dataclass(frozen=True)
class Adjustment:
    """One change of a route's limit, with the signal that caused it (for the metric and the log)."""

    route: str
    old: int
    new: int
    signal: str

    @property
    def direction(self) -> str:
        return "up" if self.new > self.old else "down"


class RouteLimiter:
    """The limit of one route and the calls it has in flight."""

    def __init__(self, route: str, config: LimiterConfig, capacity: int | None = None) -> None:
        self.route = route
        self.config = config
        self.capacity = capacity
        self.limit = self.clamp(config.initial)
        # Where the admission loop (``admission_tuning``) lets the limit move in memory now.
        self.floor = config.minimum
        self.ceiling = config.maximum
        self.in_flight = 0
        self.smoothed_ms: float | None = None
        self._sent: dict[int, float] = {}  # calls on their way to the tool: when each was sent
        self._min_now = math.inf
        self._min_prev = math.inf
        self._period_start: float | None = None
        self._last_cut = -math.inf
        self._slow = 0  # calls past the bound in a row

    @property
    def maximum(self) -> int:
        """The highest the limit goes: the configured maximum, or the server's declared capacity."""
        if self.capacity is None:
            return self.config.maximum
        return max(1, min(self.config.maximum, self.capacity))

    def clamp(self, limit: int) -> int:
        return min(self.maximum, max(min(self.config.minimum, self.maximum), limit))

    def declare(self, capacity: int | None) -> None:
        """The route's server declares (or no longer declares) how many calls it takes at once."""
        if capacity != self.capacity:
            self.capacity = capacity
            self.limit = self.clamp(self.limit if capacity is not None else self.config.initial)

    @property
    def baseline_ms(self) -> float | None:
        """The fastest call of the current and previous window (None before the first call)."""
        best = min(self._min_now, self._min_prev)
        return None if math.isinf(best) else best

    @property
    def target_ms(self) -> float | None:
        """The latency a call may take before it counts as slow (None before the first call)."""
        baseline = self.baseline_ms
        if baseline is None:
            return None
        return max(baseline * self.config.tolerance, baseline + self.config.slack_ms)

    def congested(self, now: float) -> bool:
        """The route itself is the bottleneck: latency has cut its limit below its maximum, or
        calls in flight past the bound already hold half its places (one hung call among calls
        that come and go is not a queue)."""
        if self.limit < self.maximum:
            return True
        target = self.target_ms
        if target is None:
            return False
        late = sum(1 for at in self._sent.values() if (now - at) * 1000 > target)
        return late > 0 and 2 * late >= self.limit

    def queue_room_ms(self) -> float | None:
        """How long a call may wait for a place and still end within the bound behind one more
        call at the tool: the bound less two of the route's fastest calls (None before the first
        call). 0 for a tool whose calls take longer than the slack: there, one call queued behind
        another already breaks the bound."""
        target, baseline = self.target_ms, self.baseline_ms
        if target is None or baseline is None:
            return None
        return max(0.0, target - 2 * baseline)

    def try_acquire(self) -> bool:
        """Take a place for one call; False when the route is at its limit."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def sent(self, token: int, now: float) -> None:
        """The call ``token`` went out to the tool on a ready session (``now``: monotonic seconds)."""
        self._sent[token] = now

    def release(self, rtt_ms: float | None, now: float, *, token: int = 0) -> Adjustment | None:
        """Give a place back. ``rtt_ms``: how long the call took (None: it never reached the tool,
        which says nothing about the route's latency). ``now``: monotonic seconds."""
        in_use = self.in_flight
        self.in_flight = max(0, self.in_flight - 1)
        self._sent.pop(token, None)
        if rtt_ms is None:
            return None
        rtt_ms = max(0.0, rtt_ms)
        self.smoothed_ms = rtt_ms if self.smoothed_ms is None else 0.8 * self.smoothed_ms + 0.2 * rtt_ms
        self._observe(rtt_ms, now)
        baseline = self.baseline_ms
        bound = self.target_ms
        assert baseline is not None and bound is not None
        old = self.limit
        self._slow = self._slow + 1 if rtt_ms > bound else 0
        if rtt_ms > bound:
            if self._slow < self.config.streak:
                return None  # one slow call (a pause, a hiccup) is not yet a queue
            if now - self._last_cut < baseline / 1000:
                return None  # cut less than a round trip ago: that cut has not shown yet
            self._last_cut = now
            factor = max(0.5, min(self.config.backoff, bound / rtt_ms))
            # From what was in use, not from a limit far above it (which would bind nothing).
            new = min(old, max(self.floor, min(old - 1, math.floor(min(old, in_use) * factor))))
            signal = f"latency {rtt_ms:.1f} ms > {bound:.1f} ms (baseline {baseline:.1f} ms)"
        elif in_use * 2 >= old:
            new = max(old, min(self.ceiling, self.maximum, old + 1))
            signal = f"latency {rtt_ms:.1f} ms <= {bound:.1f} ms with {in_use}/{old} in use"
        else:
            return None  # used far below its limit: proves nothing about a higher one
        if new == old:
            return None
        self.limit = new
        return Adjustment(self.route, old, new, signal)

    def retry_after_ms(self) -> int:
        """When a refused caller should come back: about one call's time on this route, bounded."""
        typical = self.smoothed_ms if self.smoothed_ms is not None else 0.0
        return int(min(self.config.retry_after_max_ms, max(self.config.retry_after_min_ms, typical)))

    def _observe(self, rtt_ms: float, now: float) -> None:
        if self._period_start is None:
            self._period_start = now
        elif now - self._period_start >= self.config.window_s:
            self._min_prev, self._min_now, self._period_start = self._min_now, math.inf, now
        self._min_now = min(self._min_now, rtt_ms)


class RouteLimits:
    """Every route's limiter, made on first use."""

    def __init__(self, config: LimiterConfig) -> None:
        self.config = config
        self.routes: dict[str, RouteLimiter] = {}

    def of(self, route: str) -> RouteLimiter:
        limiter = self.routes.get(route)
        if limiter is None:
            limiter = self.routes[route] = RouteLimiter(route, self.config)
        return limiter

"""The admission loop's rules: which moves of a route's adaptive limit (``limiter``) are recorded,
each verified against the baseline it was made from and reverted when it made things worse. Pure.

The split: the limiter moves a route's limit in memory, call by call (a cut on a slow streak must
act at once, before the next wave of calls). What persists is recorded here, at most one event per
route per tick, summarising the move since the route's last recorded limit:

* **Bounded input**: a recorded raise moves the limit by at most ``max_step`` (the limiter may not
  raise past it in memory either) and waits for at least ``MIN_CALLS`` calls in its window; a cut
  is recorded where the limiter put it (it is already in force, and bounded by the limiter: at
  least x0.5 per round trip, never below the minimum).
* **One change at a time per route**: while a change waits for its verdict, the limiter may cut
  (safety first) but not raise past the change; after a verdict, a cooldown in which the limiter
  may not raise at all (and, after a reverted cut, not cut below the reverted-to limit either).
* **Signal**: per route, over a window: calls, calls refused ``overloaded``, throughput, p50 and
  p99 of the tool's latency, the latency the limiter held calls to (``target_ms``) and the most
  calls in flight at once.
* **Verification**: after ``verify_s``, the window since the change against the one before it
  (the baseline). A raise that made p99 worse by more than the tolerance without raising
  throughput by it is reverted; a cut that refused a larger share of calls without making p99
  better by the tolerance nor letting more calls through is reverted. Otherwise it is kept (with
  too few calls to judge after three windows, it is kept and says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from writ_common import events as ev
from writ_common.envelope import StoredEvent, parse_time
from writ_executor.call_window import Timeline, nearest_rank, throughput

MIN_CALLS = 5  # a baseline or a verdict over fewer calls says nothing
BOOK_SIZE = 20_000  # calls (and refusals) kept per route: enough for any window at hundreds of calls/s

Change = ev.AdmissionAdjusted | ev.AdmissionVerified | ev.AdmissionReverted


@dataclass(frozen=True, slots=True)
class AdmissionTuning:
    initial: int  # a route's limit before anything was recorded for it
    minimum: int
    maximum: int
    max_step: int  # the most one recorded raise may add
    verify_s: float  # the verdict: this long after a change; the baseline: as long before it
    cooldown_s: float  # after a verdict, this long before the route's next recorded change
    tolerance: float = 0.2

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"limits need 1 <= minimum <= maximum, not {self.minimum}..{self.maximum}")
        if self.max_step < 1:
            raise ValueError(f"max_step must be at least 1, not {self.max_step}")

    def clamp(self, limit: int) -> int:
        return min(self.maximum, max(self.minimum, limit))


def route_of(server: str, tool: str) -> str:
    return f"{server}/{tool}"


@dataclass(slots=True)
class RouteBook:
    """Per route: when calls ended, their latency (ms) and the calls in flight then; when calls were refused."""

    calls: Timeline[tuple[float, int]] = field(default_factory=lambda: Timeline(BOOK_SIZE))
    refused: Timeline[None] = field(default_factory=lambda: Timeline(BOOK_SIZE))

    def record_call(self, route: str, at: datetime, rtt_ms: float, in_flight: int) -> None:
        self.calls.add(route, at, (rtt_ms, in_flight))

    def record_refused(self, route: str, at: datetime) -> None:
        self.refused.add(route, at, None)

    def prune(self, before: datetime) -> None:
        self.calls.prune(before)
        self.refused.prune(before)

    def signals(self, route: str, since: datetime, until: datetime, target_ms: float | None) -> ev.AdmissionSignals:
        ended = self.calls.between(route, since, until)
        took = sorted(ms for _, (ms, _n) in ended)
        return ev.AdmissionSignals(
            calls=len(took),
            overloaded=len(self.refused.between(route, since, until)),
            throughput=throughput(ended),
            p50_ms=nearest_rank(took, 0.5),
            p99_ms=nearest_rank(took, 0.99),
            target_ms=None if target_ms is None else round(target_ms, 3),
            peak_in_flight=max((n for _, (_ms, n) in ended), default=0),
        )


@dataclass(slots=True)
class RouteRecord:
    """One route as folded from the executor stream."""

    limit: int
    pending: ev.AdmissionAdjusted | None = None
    pending_at: datetime | None = None
    verdict_at: datetime | None = None  # the last verdict: the cooldown runs from it
    held_floor: int | None = None  # a reverted cut: no cut below this until the cooldown is over
    seq: int = 0  # the route's last event: names its next one, so replicas deciding alike append once


@dataclass(slots=True)
class AdmissionRecord:
    """Folded from the executor stream: each route's recorded limit and its change awaiting a verdict."""

    routes: dict[str, RouteRecord] = field(default_factory=dict)

    def limit(self, route: str, tuning: AdmissionTuning) -> int:
        record = self.routes.get(route)
        return tuning.clamp(record.limit if record else tuning.initial)


def apply_admission_event(record: AdmissionRecord, event: StoredEvent) -> str | None:
    """Fold one event; the route it moved (None: not an admission event)."""
    at = parse_time(event.envelope.occurred_at)
    match event.payload:
        case ev.AdmissionAdjusted() as p:
            route = route_of(p.server, p.tool)
            entry = record.routes.setdefault(route, RouteRecord(limit=p.old_limit))
            entry.limit, entry.pending, entry.pending_at, entry.held_floor = p.new_limit, p, at, None
        case ev.AdmissionVerified() as p:
            route = route_of(p.server, p.tool)
            entry = record.routes.setdefault(route, RouteRecord(limit=p.limit))
            entry.limit, entry.pending, entry.pending_at, entry.verdict_at = p.limit, None, None, at
        case ev.AdmissionReverted() as p:
            route = route_of(p.server, p.tool)
            entry = record.routes.setdefault(route, RouteRecord(limit=p.to_limit))
            entry.limit, entry.pending, entry.pending_at, entry.verdict_at = p.to_limit, None, None, at
            entry.held_floor = p.to_limit if p.to_limit > p.from_limit else None
        case _:
            return None
    entry.seq = event.seq
    return route


def adopted(in_memory: int, change: ev.Payload) -> int:
    """The limiter's limit once ``change`` is folded: the recorded limit, except that reverting a
    raise never lifts a limit the limiter has cut below it meanwhile."""
    match change:
        case ev.AdmissionAdjusted() as p:
            return p.new_limit
        case ev.AdmissionReverted() as p if p.to_limit < p.from_limit:
            return min(in_memory, p.to_limit)
        case ev.AdmissionReverted() as p:
            return p.to_limit
        case _:
            return in_memory


def memory_bounds(record: AdmissionRecord, route: str, tuning: AdmissionTuning, now: datetime) -> tuple[int, int]:
    """Between which limits the limiter may move the route in memory now: (floor, ceiling)."""
    recorded = record.limit(route, tuning)
    entry = record.routes.get(route)
    if entry is not None and entry.pending is not None:
        return tuning.minimum, recorded  # cuts act; no raise past the change being verified
    if entry is not None and in_cooldown(entry, tuning, now):
        return entry.held_floor or tuning.minimum, recorded
    return tuning.minimum, tuning.clamp(recorded + tuning.max_step)


def in_cooldown(entry: RouteRecord, tuning: AdmissionTuning, now: datetime) -> bool:
    return entry.verdict_at is not None and (now - entry.verdict_at).total_seconds() < tuning.cooldown_s


def next_changes(
    record: AdmissionRecord,
    proposed: dict[str, int],
    book: RouteBook,
    tuning: AdmissionTuning,
    *,
    now: datetime,
    targets: dict[str, float | None],
) -> list[Change]:
    """Each route's one change to record now, if any: a verdict on its pending change once its
    verification period is over; else, out of its cooldown, its move since the recorded limit
    (``proposed``: where the limiter has it in memory), a raise bounded by ``max_step``."""
    changes: list[Change] = []
    window = timedelta(seconds=tuning.verify_s)
    for route in sorted(set(proposed) | set(record.routes)):
        entry = record.routes.get(route)
        target = targets.get(route)
        if entry is not None and entry.pending is not None and entry.pending_at is not None:
            judged = verdict(entry.pending, entry.pending_at, book, tuning, now=now, target_ms=target)
            if judged is not None:
                changes.append(judged)
            continue
        if route not in proposed or (entry is not None and in_cooldown(entry, tuning, now)):
            continue
        old = record.limit(route, tuning)
        new = tuning.clamp(min(proposed[route], old + tuning.max_step))
        if new == old:
            continue
        signals = book.signals(route, now - window, now, target)
        if new > old and signals.calls < MIN_CALLS:
            continue  # a raise waits for calls to show it is safe (a cut, already in force, does not)
        server, _, tool = route.partition("/")
        changes.append(
            ev.AdmissionAdjusted(
                server=server,
                tool=tool,
                old_limit=old,
                new_limit=new,
                signals=signals,
                reason=move_reason(route, old, new, signals),
            )
        )
    return changes


def move_reason(route: str, old: int, new: int, s: ev.AdmissionSignals) -> str:
    latency = f"p99 {s.p99_ms:g} ms against a target of {s.target_ms:g} ms" if s.p99_ms and s.target_ms else "no calls"
    what = "raised" if new > old else "cut"
    return (
        f"{route} {what} {old} -> {new}: {latency}, {s.calls} calls, {s.overloaded} overloaded,"
        f" at most {s.peak_in_flight} in flight"
    )


def refused_share(s: ev.AdmissionSignals) -> float:
    asked = s.calls + s.overloaded
    return s.overloaded / asked if asked else 0.0


def verdict(
    pending: ev.AdmissionAdjusted,
    since: datetime,
    book: RouteBook,
    tuning: AdmissionTuning,
    *,
    now: datetime,
    target_ms: float | None,
) -> Change | None:
    elapsed = (now - since).total_seconds()
    if elapsed < tuning.verify_s:
        return None
    route = route_of(pending.server, pending.tool)
    after = book.signals(route, since, now, target_ms)
    base = pending.signals

    def kept(reason: str) -> ev.AdmissionVerified:
        return ev.AdmissionVerified(
            server=pending.server, tool=pending.tool, baseline=base, after=after, limit=pending.new_limit, reason=reason
        )

    if after.calls < MIN_CALLS or base.calls < MIN_CALLS or base.p99_ms is None or after.p99_ms is None:
        if elapsed < 3 * tuning.verify_s:
            return None  # wait for calls to judge by
        return kept("kept: too few calls to judge")
    tol = tuning.tolerance
    p99 = f"p99 {base.p99_ms:g} -> {after.p99_ms:g} ms"
    throughput = f"throughput {base.throughput:g} -> {after.throughput:g}/s"
    if pending.new_limit > pending.old_limit:
        worse = after.p99_ms > base.p99_ms * (1 + tol) and after.throughput < base.throughput * (1 + tol)
        why = f"{p99} with {throughput}: slower, and no more calls went through"
    else:
        refused = f"overloaded {refused_share(base):.0%} -> {refused_share(after):.0%} of calls"
        worse = (
            refused_share(after) > refused_share(base)
            and after.p99_ms > base.p99_ms * (1 - tol)
            and after.throughput <= base.throughput
        )
        why = f"{refused} with {p99} and {throughput}: more calls turned away, none faster"
    if worse:
        return ev.AdmissionReverted(
            server=pending.server,
            tool=pending.tool,
            baseline=base,
            after=after,
            from_limit=pending.new_limit,
            to_limit=pending.old_limit,
            reason=f"reverted: {why}",
        )
    return kept(f"kept: {p99}, {throughput}")

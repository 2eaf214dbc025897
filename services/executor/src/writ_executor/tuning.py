"""The executor's own control loop: each tool server's concurrency limit, changed one step at a
time, verified against the baseline it was changed from, and reverted when it made things worse.
Pure.

* **Bounded input**: a limit moves by one, between the configured floor (``executor_per_server``)
  and ceiling (``executor_per_server_max``).
* **One change at a time**: while a change waits for its verdict, nothing else changes.
* **Signal**: calls to the server, calls that found no free slot (``busy``), throughput and the
  p50 and p95 of call time, over the window before the change (the baseline) and since it (the verdict).
* **Verification**: a raise that made calls slower without making more of them go through (p95
  up by more than the tolerance, throughput not up by it) is reverted; otherwise it is kept.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from writ_common import events as ev
from writ_common.envelope import StoredEvent, parse_time
from writ_executor.call_window import Timeline, nearest_rank, throughput

MIN_CALLS = 5  # a baseline or a verdict over fewer calls says nothing


@dataclass(frozen=True, slots=True)
class Tuning:
    floor: int
    ceiling: int
    window_s: float  # the baseline: this long before a change
    verify_s: float  # the verdict: this long after it
    tolerance: float = 0.2

    @property
    def enabled(self) -> bool:
        return self.ceiling > self.floor


@dataclass(slots=True)
class CallBook:
    """Per server: when calls ended and how long each took (seconds), and when a call found no slot."""

    calls: Timeline[float] = field(default_factory=Timeline)
    busy: Timeline[None] = field(default_factory=Timeline)

    def record_call(self, server: str, at: datetime, seconds: float) -> None:
        """A call that ended; a server's first one is left out: it opened the session, and would
        stand for seconds of start-up in any percentile of the calls after it."""
        if server not in self.calls.by_key:
            self.calls.by_key[server] = deque()
            return
        self.calls.add(server, at, seconds)

    def record_busy(self, server: str, at: datetime) -> None:
        self.busy.add(server, at, None)

    def prune(self, before: datetime) -> None:
        self.calls.prune(before)
        self.busy.prune(before)

    def signals(self, server: str, since: datetime, until: datetime) -> ev.LimitSignals:
        ended = self.calls.between(server, since, until)
        took = sorted(s for _, s in ended)
        return ev.LimitSignals(
            calls=len(took),
            busy=len(self.busy.between(server, since, until)),
            throughput=throughput(ended),
            p50_ms=nearest_rank(took, 0.5, scale=1000),
            p95_ms=nearest_rank(took, 0.95, scale=1000),
        )


@dataclass(slots=True)
class Limits:
    """Folded from the executor stream: each server's limit and the change awaiting its verdict."""

    by_server: dict[str, int] = field(default_factory=dict)
    pending: ev.ConcurrencyAdjusted | None = None
    pending_at: datetime | None = None
    seq: int = 0  # the last limit event folded: names the next one, so replicas deciding alike append once

    def limit(self, server: str, floor: int) -> int:
        return self.by_server.get(server, floor)


def apply_limit_event(limits: Limits, event: StoredEvent) -> None:
    at = parse_time(event.envelope.occurred_at)
    match event.payload:
        case ev.ConcurrencyAdjusted() as p:
            limits.by_server[p.server] = p.new_limit
            limits.pending, limits.pending_at = p, at
        case ev.ConcurrencyVerified() as p if limits.pending and limits.pending.server == p.server:
            limits.pending = limits.pending_at = None
        case ev.ConcurrencyReverted() as p:
            limits.by_server[p.server] = p.to_limit
            if limits.pending and limits.pending.server == p.server:
                limits.pending = limits.pending_at = None
        case _:
            return
    limits.seq = event.seq


Change = ev.ConcurrencyAdjusted | ev.ConcurrencyVerified | ev.ConcurrencyReverted


def slot_limits(limits: Limits, tuning: Tuning) -> dict[str, int]:
    """Each server's limit as the slots hold it: what the loop appended, kept between the floor
    and the ceiling this replica is configured with (another replica's may differ)."""
    return {server: min(max(n, tuning.floor), tuning.ceiling) for server, n in limits.by_server.items()}


def next_change(limits: Limits, book: CallBook, tuning: Tuning, now: datetime) -> Change | None:
    """The one change to make now, if any: a verdict on the pending change once its verification
    period is over, else a raise of the most saturated server below the ceiling."""
    if not tuning.enabled:
        return None
    if limits.pending is not None and limits.pending_at is not None:
        return verdict(limits.pending, limits.pending_at, book, tuning, now)
    window = timedelta(seconds=tuning.window_s)
    candidates = []
    for server in book.busy.by_key:
        old = limits.limit(server, tuning.floor)
        base = book.signals(server, now - window, now)
        if base.busy and base.calls >= MIN_CALLS and old < tuning.ceiling:
            candidates.append((base.busy, server, old, base))
    if not candidates:
        return None
    _, server, old, base = max(candidates)
    return ev.ConcurrencyAdjusted(
        server=server,
        old_limit=old,
        new_limit=old + 1,
        baseline=base,
        reason=f"{base.busy} calls found all {old} slots of {server!r} taken in {tuning.window_s:g}s",
    )


def verdict(
    pending: ev.ConcurrencyAdjusted, since: datetime, book: CallBook, tuning: Tuning, now: datetime
) -> Change | None:
    if (now - since).total_seconds() < tuning.verify_s:
        return None
    after = book.signals(pending.server, since, now)
    base = pending.baseline
    if after.calls < MIN_CALLS or base.p95_ms is None or after.p95_ms is None:
        if (now - since).total_seconds() < 3 * tuning.verify_s:
            return None  # wait for calls to judge by
        return ev.ConcurrencyVerified(
            server=pending.server,
            limit=pending.new_limit,
            baseline=base,
            after=after,
            reason="kept: too few calls to judge",
        )
    slower = after.p95_ms > base.p95_ms * (1 + tuning.tolerance)
    no_more = after.throughput < base.throughput * (1 + tuning.tolerance)
    if slower and no_more:
        return ev.ConcurrencyReverted(
            server=pending.server,
            from_limit=pending.new_limit,
            to_limit=pending.old_limit,
            baseline=base,
            after=after,
            reason=f"p95 {base.p95_ms:g} -> {after.p95_ms:g} ms with throughput {base.throughput:g} ->"
            f" {after.throughput:g}/s: slower, and no more calls went through",
        )
    return ev.ConcurrencyVerified(
        server=pending.server,
        limit=pending.new_limit,
        baseline=base,
        after=after,
        reason=f"kept: p95 {base.p95_ms:g} -> {after.p95_ms:g} ms, throughput {base.throughput:g} -> {after.throughput:g}/s",
    )

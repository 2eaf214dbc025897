"""The admission loop as pure rules: a route's move of its adaptive limit recorded with its signal,
old and new value (a raise bounded by the max step), one change at a time per route, a cooldown
after each verdict, and the verdict against the baseline that keeps or reverts it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stored_events import stored_at
from writ_common import events as ev
from writ_common.settings import WritSettings
from writ_executor.admission import limiter_config
from writ_executor.admission_loop import proposal
from writ_executor.admission_tuning import (
    AdmissionRecord,
    AdmissionTuning,
    RouteBook,
    adopted,
    apply_admission_event,
    memory_bounds,
    next_changes,
)
from writ_executor.limiter import LimiterConfig, RouteLimiter

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TUNING = AdmissionTuning(initial=8, minimum=1, maximum=16, max_step=2, verify_s=10.0, cooldown_s=10.0)
ROUTE = "srv/tool"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def book_of(
    *, start: float, calls: int, ms: float, refused: int = 0, in_flight: int = 4, book: RouteBook | None = None
) -> RouteBook:
    """``calls`` calls of ``ms`` each spread over the 10 s from ``start``; ``refused`` refusals."""
    book = book or RouteBook()
    for i in range(calls):
        book.record_call(ROUTE, at(start + i * 9 / max(calls - 1, 1)), ms, in_flight)
    for i in range(refused):
        book.record_refused(ROUTE, at(start + i * 9 / max(refused, 1)))
    return book


def fold(*changes: tuple[ev.Payload, float]) -> AdmissionRecord:
    record = AdmissionRecord()
    for seq, (payload, when) in enumerate(changes, start=1):
        apply_admission_event(record, stored_at(payload, seq, at(when), service="executor"))
    return record


def changes(record: AdmissionRecord, proposed: dict[str, int], book: RouteBook, now: float) -> list[ev.Payload]:
    return list(next_changes(record, proposed, book, TUNING, now=at(now), targets={ROUTE: 300.0}))


def adjusted(old: int, new: int, base: RouteBook) -> ev.AdmissionAdjusted:
    (change,) = changes(AdmissionRecord(), {ROUTE: new}, base, 10)
    assert isinstance(change, ev.AdmissionAdjusted) and (change.old_limit, change.new_limit) == (old, new)
    return change


def test_a_cut_in_memory_is_recorded_with_its_signal_old_and_new_value() -> None:
    book = book_of(start=0, calls=20, ms=900.0, refused=5, in_flight=8)
    (change,) = changes(AdmissionRecord(), {ROUTE: 3}, book, 10)
    assert isinstance(change, ev.AdmissionAdjusted)
    assert (change.server, change.tool, change.old_limit, change.new_limit) == ("srv", "tool", 8, 3)
    s = change.signals
    assert (s.calls, s.overloaded, s.p99_ms, s.target_ms, s.peak_in_flight) == (20, 5, 900.0, 300.0, 8)
    assert "cut 8 -> 3" in change.reason and "p99 900 ms against a target of 300 ms" in change.reason


def test_a_raise_is_recorded_at_most_max_step_above_the_recorded_limit() -> None:
    (change,) = changes(AdmissionRecord(), {ROUTE: 15}, book_of(start=0, calls=20, ms=100.0), 10)
    assert isinstance(change, ev.AdmissionAdjusted) and (change.old_limit, change.new_limit) == (8, 10)
    assert "raised 8 -> 10" in change.reason
    # ... and the limiter may not raise past it in memory: its ceiling is the recorded limit + step.
    assert memory_bounds(AdmissionRecord(), ROUTE, TUNING, at(0)) == (1, 10)
    at_top = fold(
        (ev.AdmissionVerified(server="srv", tool="tool", baseline=change.signals, after=change.signals, limit=16), 0)
    )
    assert memory_bounds(at_top, ROUTE, TUNING, at(20)) == (1, 16), "never above the maximum"


def test_nothing_is_recorded_while_the_limit_has_not_moved() -> None:
    assert changes(AdmissionRecord(), {ROUTE: 8}, book_of(start=0, calls=20, ms=100.0), 10) == []


def test_a_raise_waits_for_enough_calls_a_cut_does_not() -> None:
    few = book_of(start=0, calls=4, ms=100.0)
    assert changes(AdmissionRecord(), {ROUTE: 9}, few, 10) == []
    (cut,) = changes(AdmissionRecord(), {ROUTE: 4}, few, 10)
    assert isinstance(cut, ev.AdmissionAdjusted) and cut.new_limit == 4


def test_one_change_at_a_time_per_route_and_no_raise_past_it_while_it_is_verified() -> None:
    change = adjusted(8, 10, book_of(start=0, calls=20, ms=100.0))
    record = fold((change, 10))
    assert record.limit(ROUTE, TUNING) == 10
    assert changes(record, {ROUTE: 12}, RouteBook(), 12) == [], "waiting for the verdict: no other change"
    assert memory_bounds(record, ROUTE, TUNING, at(12)) == (1, 10), "cuts still act; no raise past 10"


def test_a_cooldown_after_each_verdict_then_the_next_move() -> None:
    base = book_of(start=0, calls=20, ms=100.0)
    change = adjusted(8, 10, base)
    book = book_of(start=10.5, calls=20, ms=100.0, book=base)
    (kept,) = changes(fold((change, 10)), {ROUTE: 10}, book, 21)
    assert isinstance(kept, ev.AdmissionVerified) and kept.limit == 10
    record = fold((change, 10), (kept, 21))
    assert changes(record, {ROUTE: 12}, book, 25) == [], "cooling down"
    assert memory_bounds(record, ROUTE, TUNING, at(25)) == (1, 10), "no raise in memory while cooling down"
    (after,) = changes(record, {ROUTE: 12}, book_of(start=22, calls=20, ms=100.0, book=book), 32)
    assert isinstance(after, ev.AdmissionAdjusted) and (after.old_limit, after.new_limit) == (10, 12)


def test_verify_keeps_a_raise_that_let_more_calls_through() -> None:
    base = book_of(start=0, calls=10, ms=100.0)
    change = adjusted(8, 10, base)
    book = book_of(start=10.5, calls=20, ms=130.0, book=base)  # p99 +30%, throughput doubled
    assert changes(fold((change, 10)), {ROUTE: 10}, book, 15) == [], "not before the verification window"
    (kept,) = changes(fold((change, 10)), {ROUTE: 10}, book, 21)
    assert isinstance(kept, ev.AdmissionVerified) and kept.limit == 10
    assert kept.baseline == change.signals and kept.after.calls == 20
    assert kept.reason.startswith("kept: p99 100 -> 130 ms")


def test_verify_reverts_a_raise_that_made_calls_slower_and_no_more() -> None:
    base = book_of(start=0, calls=20, ms=100.0)
    change = adjusted(8, 10, base)
    book = book_of(start=10.5, calls=20, ms=400.0, book=base)
    (reverted,) = changes(fold((change, 10)), {ROUTE: 9}, book, 21)
    assert isinstance(reverted, ev.AdmissionReverted)
    assert (reverted.from_limit, reverted.to_limit) == (10, 8)
    assert "p99 100 -> 400 ms" in reverted.reason and "slower, and no more calls went through" in reverted.reason
    record = fold((change, 10), (reverted, 21))
    assert record.limit(ROUTE, TUNING) == 8 and record.routes[ROUTE].pending is None
    # The limiter goes back to 8, or stays lower where it has cut meanwhile.
    assert (adopted(9, reverted), adopted(5, reverted)) == (8, 5)


def test_verify_reverts_a_cut_that_turned_more_calls_away_without_making_any_faster() -> None:
    base = book_of(start=0, calls=20, ms=900.0, refused=1)
    (change,) = changes(AdmissionRecord(), {ROUTE: 3}, base, 10)
    assert isinstance(change, ev.AdmissionAdjusted)
    book = book_of(start=10.5, calls=10, ms=900.0, refused=10, book=base)
    (reverted,) = changes(fold((change, 10)), {ROUTE: 3}, book, 21)
    assert isinstance(reverted, ev.AdmissionReverted) and (reverted.from_limit, reverted.to_limit) == (3, 8)
    assert "more calls turned away, none faster" in reverted.reason
    assert adopted(2, reverted) == 8, "reverting a cut restores the limit"
    record = fold((change, 10), (reverted, 21))
    assert memory_bounds(record, ROUTE, TUNING, at(25)) == (8, 8), "no cut below it while cooling down"
    assert memory_bounds(record, ROUTE, TUNING, at(32)) == (1, 10)


def test_verify_keeps_a_cut_that_brought_latency_down() -> None:
    base = book_of(start=0, calls=20, ms=900.0)
    (change,) = changes(AdmissionRecord(), {ROUTE: 3}, base, 10)
    assert isinstance(change, ev.AdmissionAdjusted)
    book = book_of(start=10.5, calls=15, ms=200.0, refused=5, book=base)
    (kept,) = changes(fold((change, 10)), {ROUTE: 3}, book, 21)
    assert isinstance(kept, ev.AdmissionVerified) and kept.limit == 3


def test_too_few_calls_waits_then_keeps_and_says_so() -> None:
    change = adjusted(8, 10, book_of(start=0, calls=20, ms=100.0))
    record = fold((change, 10))
    assert changes(record, {ROUTE: 10}, RouteBook(), 25) == [], "waiting for calls to judge by"
    (kept,) = changes(record, {ROUTE: 10}, RouteBook(), 41)
    assert isinstance(kept, ev.AdmissionVerified) and "too few calls" in kept.reason


def test_a_restart_resumes_the_recorded_limits() -> None:
    base = book_of(start=0, calls=20, ms=100.0)
    change = adjusted(8, 10, base)
    record = fold((change, 10))
    assert (record.limit(ROUTE, TUNING), record.limit("other/t", TUNING)) == (10, 8)
    assert record.routes[ROUTE].seq == 1, "names the route's next event, so two replicas append it once"


def test_the_limiter_moves_only_within_the_loops_floor_and_ceiling() -> None:
    limiter = RouteLimiter(ROUTE, LimiterConfig(initial=4, maximum=16, streak=1, slack_ms=10.0, tolerance=1.5))
    limiter.ceiling = 4
    while limiter.try_acquire():
        pass
    assert limiter.release(100.0, now=0.0) is None and limiter.limit == 4, "no raise past the ceiling"
    limiter.floor = 4
    limiter.try_acquire()
    assert limiter.release(900.0, now=1.0) is None and limiter.limit == 4, "no cut below the floor"
    limiter.floor = 1
    limiter.try_acquire()
    cut = limiter.release(900.0, now=2.0)
    assert cut is not None and cut.new < 4 and limiter.target_ms == 150.0


def test_a_route_may_use_what_its_server_may_be_raised_to() -> None:
    assert limiter_config(WritSettings(executor_per_server=1)).maximum == 1
    assert limiter_config(WritSettings(executor_per_server=1, executor_per_server_max=2)).maximum == 2
    assert limiter_config(WritSettings(executor_per_server=64, executor_per_server_max=128)).maximum == 32


def test_a_declared_capacity_capping_the_limit_is_no_move_of_the_loops() -> None:
    capped = RouteLimiter(ROUTE, LimiterConfig(initial=16, maximum=16), capacity=1)
    assert capped.limit == 1
    assert proposal(capped, 8) == 8, "the cap is the server's, not a cut to record (and revert)"
    book = book_of(start=0, calls=20, ms=100.0)
    assert changes(AdmissionRecord(), {ROUTE: proposal(capped, 8)}, book, 10) == []
    cut_below = RouteLimiter(ROUTE, LimiterConfig(initial=16, maximum=16), capacity=4)
    cut_below.limit = 2  # latency cut it under the capacity: that is the loop's to record
    assert proposal(cut_below, 8) == 2
    assert proposal(RouteLimiter(ROUTE, LimiterConfig(initial=16, maximum=16)), 8) == 16

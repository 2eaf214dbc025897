"""The executor's concurrency loop as pure rules: a raise of one step for a saturated server, one
change at a time, kept or reverted against the baseline it was made from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stored_events import stored_at
from writ_common import events as ev
from writ_common.envelope import StoredEvent
from writ_executor.slots import ServerSlots
from writ_executor.tuning import CallBook, Limits, Tuning, apply_limit_event, next_change

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TUNING = Tuning(floor=1, ceiling=3, window_s=10.0, verify_s=10.0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def busy_book(server: str, *, calls: int, seconds: float, start: float = 0.0, busy: int = 3) -> CallBook:
    book = CallBook()
    book.record_call(server, at(start), 3.0)  # the first call opens the session: not counted
    for i in range(calls):
        book.record_call(server, at(start + i * 10 / calls), seconds)
    for i in range(busy):
        book.record_busy(server, at(start + i))
    return book


def stored(payload: ev.Payload, seq: int, when: datetime) -> StoredEvent:
    return stored_at(payload, seq, when, service="executor")


def test_a_saturated_server_gets_one_more_slot_with_its_baseline() -> None:
    book = busy_book("slow", calls=10, seconds=0.1)
    book.record_busy("other", at(1))  # busy once, but too few calls to judge it by
    change = next_change(Limits(), book, TUNING, at(10))
    assert isinstance(change, ev.ConcurrencyAdjusted)
    assert (change.server, change.old_limit, change.new_limit) == ("slow", 1, 2)
    assert (change.baseline.calls, change.baseline.busy, change.baseline.p50_ms) == (10, 3, 100.0)
    assert "3 calls found all 1 slots of 'slow' taken" in change.reason


def test_nothing_changes_without_saturation_at_the_ceiling_or_when_disabled() -> None:
    assert next_change(Limits(), busy_book("s", calls=10, seconds=0.1, busy=0), TUNING, at(10)) is None
    assert next_change(Limits(by_server={"s": 3}), busy_book("s", calls=10, seconds=0.1), TUNING, at(10)) is None
    off = Tuning(floor=2, ceiling=2, window_s=10.0, verify_s=10.0)
    assert next_change(Limits(), busy_book("s", calls=10, seconds=0.1), off, at(10)) is None


def fold(*payloads: tuple[ev.Payload, float]) -> Limits:
    limits = Limits()
    for seq, (payload, when) in enumerate(payloads, start=1):
        apply_limit_event(limits, stored(payload, seq, at(when)))
    return limits


def adjusted() -> ev.ConcurrencyAdjusted:
    base = ev.LimitSignals(calls=10, busy=3, throughput=1.0, p50_ms=100.0, p95_ms=100.0)
    return ev.ConcurrencyAdjusted(server="s", old_limit=1, new_limit=2, baseline=base)


def test_one_change_at_a_time_then_a_raise_that_made_calls_slower_is_reverted() -> None:
    limits = fold((adjusted(), 10))
    assert limits.by_server == {"s": 2} and limits.pending is not None
    book = busy_book("s", calls=10, seconds=0.25, start=10)  # slower, and no more calls per second
    book.record_busy("t", at(12))
    assert next_change(limits, book, TUNING, at(15)) is None  # verifying: nothing else changes meanwhile
    verdict = next_change(limits, book, TUNING, at(20))
    assert isinstance(verdict, ev.ConcurrencyReverted)
    assert (verdict.from_limit, verdict.to_limit, verdict.after.p95_ms) == (2, 1, 250.0)
    assert "slower, and no more calls went through" in verdict.reason
    apply_limit_event(limits, stored(verdict, 2, at(20)))
    assert (limits.by_server, limits.pending, limits.seq) == ({"s": 1}, None, 2)


def test_a_raise_that_let_more_calls_through_is_kept() -> None:
    limits = fold((adjusted(), 10))
    book = busy_book("s", calls=30, seconds=0.12, start=10)  # a little slower, three times the throughput
    verdict = next_change(limits, book, TUNING, at(20))
    assert isinstance(verdict, ev.ConcurrencyVerified) and verdict.limit == 2
    apply_limit_event(limits, stored(verdict, 2, at(20)))
    assert (limits.by_server, limits.pending) == ({"s": 2}, None)


def test_a_verdict_waits_for_calls_to_judge_by() -> None:
    limits = fold((adjusted(), 10))
    assert next_change(limits, CallBook(), TUNING, at(25)) is None
    kept = next_change(limits, CallBook(), TUNING, at(40))
    assert isinstance(kept, ev.ConcurrencyVerified) and "too few calls" in kept.reason


def test_slots_follow_each_servers_own_limit() -> None:
    slots = ServerSlots(1)
    slots.limits = {"wide": 2}
    assert [slots.take("wide"), slots.take("wide"), slots.take("wide")] == [True, True, False]
    assert [slots.take("narrow"), slots.take("narrow")] == [True, False]

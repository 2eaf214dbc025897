"""The executor's adaptive limit per route: up on good latency while in use, down on bad, within
its bounds, and the ``overloaded`` answer it leads to."""

from __future__ import annotations

import pytest

from writ_common import events as ev
from writ_executor.admission import overloaded
from writ_executor.limiter import LimiterConfig, RouteLimiter, RouteLimits

pytestmark = pytest.mark.unit


def fill(limiter: RouteLimiter) -> int:
    taken = 0
    while limiter.try_acquire():
        taken += 1
    return taken


def test_refuses_past_the_limit_and_admits_again_once_a_place_is_free() -> None:
    limiter = RouteLimiter("s/t", LimiterConfig(initial=3, maximum=8))
    assert fill(limiter) == 3
    assert not limiter.try_acquire()
    limiter.release(None, now=0.0)  # a call that never reached the tool: no sample, no change
    assert limiter.limit == 3 and limiter.in_flight == 2
    assert limiter.try_acquire()


def test_good_latency_while_in_use_raises_the_limit_by_one_up_to_the_maximum() -> None:
    limiter = RouteLimiter("s/t", LimiterConfig(initial=4, maximum=6))
    for step in range(5):
        fill(limiter)
        adjustment = limiter.release(100.0, now=float(step))
        if limiter.limit < 6 or adjustment is not None:
            assert adjustment is not None and adjustment.new == adjustment.old + 1
            assert adjustment.direction == "up" and "100.0 ms" in adjustment.signal
    assert limiter.limit == 6, "never above the maximum"


def test_good_latency_on_an_idle_route_proves_nothing_about_a_higher_limit() -> None:
    limiter = RouteLimiter("s/t", LimiterConfig(initial=10))
    limiter.try_acquire()
    assert limiter.release(100.0, now=0.0) is None
    assert limiter.limit == 10


def test_bad_latency_cuts_the_limit_once_per_slow_wave_down_to_the_minimum() -> None:
    config = LimiterConfig(initial=20, minimum=2, maximum=20, tolerance=2.0, slack_ms=50.0, backoff=0.5, streak=1)
    limiter = RouteLimiter("s/t", config)
    fill(limiter)
    limiter.release(200.0, now=0.0)  # the baseline: 200 ms
    assert limiter.limit == 20
    cut = limiter.release(450.0, now=1.0)  # > 2 x 200 ms and > 200 + 50 ms
    assert cut is not None and (cut.old, cut.new, cut.direction) == (20, 9, "down")  # 19 in use x0.5
    assert "450.0 ms > 400.0 ms" in cut.signal and "baseline 200.0 ms" in cut.signal
    assert limiter.release(450.0, now=1.1) is None, "within one round trip of the last cut: not again"
    assert limiter.limit == 9
    for n in range(10):
        limiter.release(450.0, now=2.0 + n)
    assert limiter.limit == 2, "never below the minimum"


def test_the_cut_is_sized_by_how_far_past_the_bound_the_latency_is() -> None:
    limiter = RouteLimiter(
        "s/t", LimiterConfig(initial=32, maximum=32, tolerance=2.0, backoff=0.9, slack_ms=50.0, streak=1)
    )
    fill(limiter)
    limiter.release(100.0, now=0.0)
    assert limiter.release(220.0, now=1.0) is not None and limiter.limit == 27, "31 in use, just past: x0.9"
    assert limiter.release(3200.0, now=2.0) is not None and limiter.limit == 13, "16 x the baseline: halved"


def test_a_fast_tool_is_not_cut_for_noise_within_the_slack() -> None:
    limiter = RouteLimiter("s/t", LimiterConfig(initial=8, maximum=8, slack_ms=50.0, streak=1))
    fill(limiter)
    limiter.release(2.0, now=0.0)
    assert limiter.release(30.0, now=1.0) is None  # 15 x the baseline, but only 28 ms above it
    assert limiter.limit == 8
    assert limiter.release(80.0, now=2.0) is not None and limiter.limit == 3  # 6 in use x 52/80


def test_one_slow_call_is_not_a_queue_three_in_a_row_are() -> None:
    limiter = RouteLimiter("s/t", LimiterConfig(initial=8, maximum=8, slack_ms=50.0, streak=3))
    fill(limiter)
    limiter.release(10.0, now=0.0)
    assert limiter.release(900.0, now=1.0) is None, "a pause, a hiccup"
    limiter.release(10.0, now=2.0)
    assert limiter.release(900.0, now=3.0) is None and limiter.release(900.0, now=4.0) is None
    cut = limiter.release(900.0, now=5.0)
    assert cut is not None and cut.direction == "down"


def test_the_baseline_follows_a_route_that_became_slower_for_good() -> None:
    limiter = RouteLimiter("s/t", LimiterConfig(initial=8, window_s=10.0))
    limiter.try_acquire()
    limiter.release(10.0, now=0.0)
    for t in (10.0, 20.0, 30.0):
        limiter.try_acquire()
        limiter.release(500.0, now=t)
    assert limiter.baseline_ms == 500.0, "two windows later, the old fast calls are forgotten"


def test_retry_after_is_about_one_call_of_the_route_within_bounds() -> None:
    config = LimiterConfig(retry_after_min_ms=100, retry_after_max_ms=1000)
    limiter = RouteLimiter("s/t", config)
    assert limiter.retry_after_ms() == 100
    limiter.try_acquire()
    limiter.release(300.0, now=0.0)
    assert limiter.retry_after_ms() == 300
    limiter.try_acquire()
    limiter.release(50_000.0, now=1.0)
    assert limiter.retry_after_ms() == 1000


def test_a_cut_starts_from_the_calls_in_use_not_from_a_limit_far_above_them() -> None:
    limiter = RouteLimiter("s/t", LimiterConfig(initial=32, maximum=32, slack_ms=0.0, streak=1))
    for _ in range(10):
        limiter.try_acquire()
    limiter.release(100.0, now=0.0)
    cut = limiter.release(400.0, now=1.0)  # 9 in use when it ended; bound 200 ms: x0.5
    assert cut is not None and (cut.old, cut.new) == (32, 4)


def test_a_route_is_congested_only_while_latency_holds_its_limit_below_its_maximum() -> None:
    limiter = RouteLimiter("s/t", LimiterConfig(initial=4, maximum=4, slack_ms=0.0, streak=1))
    fill(limiter)
    assert not limiter.congested(0.0), "full at its maximum: a burst, not a struggling tool"
    limiter.release(100.0, now=0.0)
    limiter.release(300.0, now=1.0)
    assert limiter.limit < 4 and limiter.congested(1.0)
    while limiter.limit < 4:
        fill(limiter)
        limiter.release(100.0, now=2.0)
    assert not limiter.congested(2.0), "good latency raised it back: no longer the bottleneck"


def test_calls_in_flight_past_the_bound_on_half_the_places_make_the_route_congested_before_they_end() -> None:
    limiter = RouteLimiter("s/t", LimiterConfig(initial=4, maximum=4, slack_ms=0.0, streak=1))
    limiter.try_acquire()
    limiter.release(100.0, now=0.0)  # baseline 100 ms: bound 150 ms
    fill(limiter)
    limiter.sent(7, 1.0)
    assert not limiter.congested(1.2), "one hung call among four places: not a queue"
    limiter.sent(8, 1.0)
    assert not limiter.congested(1.1)
    assert limiter.congested(1.2), "two of four places held 200 ms, against a bound of 150 ms"
    limiter.release(None, now=1.3, token=7)
    assert not limiter.congested(1.3), "one of them ended: one late call of four places is left"


def test_queue_room_is_the_bound_less_two_fastest_calls() -> None:
    limiter = RouteLimiter("s/t", LimiterConfig(tolerance=1.5, slack_ms=250.0))
    assert limiter.queue_room_ms() is None, "before any call: unknown"
    limiter.try_acquire()
    limiter.release(500.0, now=0.0)  # bound 750 ms: one more call behind it would take 1000
    assert limiter.queue_room_ms() == 0.0
    fast = RouteLimiter("s/u", LimiterConfig(tolerance=1.5, slack_ms=250.0))
    fast.try_acquire()
    fast.release(2.0, now=0.0)
    assert fast.queue_room_ms() == pytest.approx(248.0)


def test_routes_have_limits_of_their_own() -> None:
    limits = RouteLimits(LimiterConfig(initial=1))
    assert limits.of("a/x").try_acquire()
    assert not limits.of("a/x").try_acquire()
    assert limits.of("a/y").try_acquire(), "another tool of the same server is another route"


@pytest.mark.parametrize(
    "kwargs", [{"minimum": 0}, {"minimum": 5, "maximum": 4}, {"backoff": 1.0}, {"backoff": 0.0}, {"tolerance": 0.5}]
)
def test_bad_bounds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        LimiterConfig(**kwargs)  # type: ignore[arg-type]


def test_the_overloaded_answer_names_route_limit_and_retry_after() -> None:
    answer = overloaded("time/get_current_time", 4, 250)
    assert isinstance(answer, ev.ExecutionFailed) and answer.code == "overloaded" and answer.retryable
    assert "retry after 250 ms" in answer.reason and "did not run" in answer.reason
    assert answer.result == {"retry_after_ms": 250, "route": "time/get_current_time", "limit": 4}


def test_a_declared_capacity_caps_the_limit_and_no_raise_passes_it() -> None:
    limiter = RouteLimiter("s/t", LimiterConfig(initial=32, maximum=32), capacity=1)
    assert limiter.limit == 1 and fill(limiter) == 1
    assert limiter.release(100.0, now=0.0) is None and limiter.limit == 1, "good latency: still one"
    limiter.declare(4)
    assert limiter.limit == 1 and limiter.maximum == 4, "a larger capacity is room to rise, not a raise"
    limiter.declare(None)
    assert limiter.limit == 32 and limiter.maximum == 32, "no longer declared: the configured start again"

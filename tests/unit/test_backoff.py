"""The supervisor's restart delays: doubling to a low cap, and back to the start after a healthy run."""

from __future__ import annotations

import pytest

from writ.runtime.backoff import BACKOFF_MAX, Backoff

pytestmark = pytest.mark.unit


def test_delays_double_from_the_start_and_stop_at_the_cap() -> None:
    backoff = Backoff(start=0.5, cap=5.0, healthy_after=10.0)
    assert [backoff.next_delay(ran_for=0.1) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_the_default_cap_keeps_an_outage_short() -> None:
    backoff = Backoff()
    assert max(backoff.next_delay(ran_for=0.0) for _ in range(50)) == BACKOFF_MAX <= 5.0


def test_a_healthy_run_restarts_from_the_first_delay() -> None:
    backoff = Backoff(start=0.5, cap=5.0, healthy_after=10.0)
    for _ in range(6):
        backoff.next_delay(ran_for=1.0)
    assert backoff.next_delay(ran_for=10.0) == 0.5  # up 10 s: the crash loop is over
    assert backoff.next_delay(ran_for=9.9) == 1.0  # a short run keeps doubling


def test_reset_and_a_start_above_the_cap() -> None:
    backoff = Backoff(start=0.5, cap=5.0)
    backoff.next_delay(ran_for=0.0)
    backoff.next_delay(ran_for=0.0)
    backoff.reset()
    assert backoff.next_delay(ran_for=0.0) == 0.5
    assert Backoff(start=8.0, cap=5.0).next_delay(ran_for=0.0) == 5.0

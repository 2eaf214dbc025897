"""bench-load's open-loop arithmetic: when calls are due, when a run counts as kept up, and when
the plane was back to normal."""

from __future__ import annotations

import pytest

from writ.bench_open import OpenRun, Outcome, back_to_normal, offsets

pytestmark = pytest.mark.unit


def outcome(at: float, ms: float, code: str = "ok") -> Outcome:
    return Outcome(at, ms, "succeeded" if code == "ok" else "failed", code, f"in-{at}", "a")


def test_calls_are_due_at_a_fixed_rate_per_phase() -> None:
    assert offsets([(1.0, 4.0)]) == [0.0, 0.25, 0.5, 0.75]
    assert offsets([(1.0, 2.0), (0.5, 4.0)]) == [0.0, 0.5, 1.0, 1.25]


def test_a_run_is_kept_up_only_with_every_call_answered_p99_bounded_and_no_growing_queue() -> None:
    run = OpenRun("x", rate=2.0, seconds=3.0, outcomes=[outcome(t / 2, 50.0) for t in range(6)])
    run.queue_ages = [(0.0, 10.0), (2.5, 15.0)]
    assert run.kept_up(100.0)
    assert not run.kept_up(40.0), "p99 past the bound"
    run.queue_ages = [(0.0, 10.0), (2.5, 500.0)]
    assert not run.kept_up(100.0), "queue age grew over the run: absorbing, not sustaining"
    run.queue_ages = [(0.0, 10.0), (2.5, 15.0)]
    run.unanswered = 1
    assert not run.kept_up(100.0), "a call without an answer"


def test_back_to_normal_is_the_first_call_from_which_all_later_ones_are_fine() -> None:
    run = OpenRun(
        "x",
        rate=1.0,
        seconds=10.0,
        outcomes=[outcome(4.0, 900.0), outcome(5.0, 50.0, "overloaded"), outcome(6.0, 900.0), outcome(7.0, 80.0)],
    )
    run.outcomes.append(outcome(8.0, 60.0))
    assert back_to_normal(run, 5.0, 100.0) == 2.0
    run.outcomes.append(outcome(9.0, 400.0))
    assert back_to_normal(run, 5.0, 100.0) is None, "not normal by the end of the run"

"""The executor's rules that used to live inside its handlers: which failures are retried, which
leave the outcome unknown and which are final; the guards that keep a call from running twice;
the deadline's hold on a call's timeout; what is never shed. Pure: no broker, no tool server."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from mcp.shared.exceptions import MCPError
from test_rules import authorized, started

from writ_common import events as ev
from writ_common.envelope import MAX_CONTENT_DEPTH
from writ_common.errors import Refusal
from writ_executor.domain import (
    CallError,
    Invoke,
    after_error,
    attempt_may_be_running,
    call_timeout,
    circuit_open,
    counts_against_breaker,
    decide_execution,
    may_shed,
    next_step,
    not_run,
    reconcile,
    returned_error,
    too_late_to_call,
    unknown_server,
)
from writ_executor.failures import classify
from writ_executor.redaction import MIN_SECRET_LENGTH, Redactor, invalid_secret_value
from writ_executor.sessions import CallInterrupted, ServerUnavailable
from writ_executor.tuning import Limits, Tuning, slot_limits

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-token-value"
REDACTOR = Redactor({"api-token": SECRET})


def classified(exc: ServerUnavailable | CallInterrupted | MCPError, limit: int = 1 << 20) -> CallError:
    return classify(exc, "crm", REDACTOR, max_output_bytes=limit)


class TestErrorClassification:
    def test_an_unreachable_server_did_not_run_the_call_so_it_is_retried_even_if_not_idempotent(self) -> None:
        error = classified(ServerUnavailable(f"connect refused (token {SECRET})"))
        assert (error.kind, error.code) == ("not_sent", "server_unavailable")
        assert SECRET not in error.message  # scrubbed before it is recorded
        assert counts_against_breaker(error)
        retry = after_error(authorized(False, started(1)), 1, error, now=datetime.now(UTC))
        assert isinstance(retry, ev.ExecutionAttemptFailed) and retry.code == "server_unavailable"

    def test_an_interrupted_call_may_have_run_so_it_is_unknown_unless_idempotent(self) -> None:
        error = classified(CallInterrupted("no answer within 30s"))
        assert (error.kind, error.code) == ("interrupted", "call_interrupted")
        assert counts_against_breaker(error)
        unknown = after_error(authorized(False, started(1)), 1, error, now=datetime.now(UTC))
        assert isinstance(unknown, ev.ExecutionOutcomeUnknown) and unknown.reason.startswith("outcome_unknown: ")
        assert isinstance(
            after_error(authorized(True, started(1)), 1, error, now=datetime.now(UTC)), ev.ExecutionAttemptFailed
        )

    def test_a_protocol_refusal_is_final_keeps_its_jsonrpc_error_and_leaves_the_breaker_alone(self) -> None:
        error = classified(MCPError(-32602, f"unknown tool (key {SECRET})", {"hint": SECRET}))
        assert (error.kind, error.code) == ("refused", "mcp_error")
        assert error.message.startswith("'crm' refused the call: ") and SECRET not in error.message
        assert error.error is not None and error.error["code"] == -32602 and SECRET not in str(error.error)
        assert not counts_against_breaker(error)  # the server answered: it is up
        final = after_error(authorized(True, started(1)), 1, error, now=datetime.now(UTC))
        assert isinstance(final, ev.ExecutionFailed) and not final.retryable and final.code == "mcp_error"
        assert final.result == {"error": error.error}

    def test_a_refusal_too_large_or_too_deep_to_record_loses_its_data_not_its_code(self) -> None:
        big = classified(MCPError(-32000, "nope", {"blob": "x" * 5000}), limit=1000)
        assert big.error == {"code": -32000, "message": "nope"}
        deep: object = "bottom"
        for _ in range(MAX_CONTENT_DEPTH):
            deep = [deep]
        assert "data" not in returned_error({"code": 1, "message": "m", "data": deep}, 1 << 20)
        small = {"code": 1, "message": "m", "data": {"field": "x"}}
        assert returned_error(small, 1 << 20) == small

    def test_an_open_breaker_sends_nothing_and_the_call_is_retried(self) -> None:
        error = circuit_open("crm", 4.25)
        assert (error.kind, error.code) == ("not_sent", "circuit_open") and "4.2s more" in error.message
        assert isinstance(
            after_error(authorized(False, started(1)), 1, error, now=datetime.now(UTC)), ev.ExecutionAttemptFailed
        )

    def test_what_can_never_run_is_a_final_failure_carrying_the_refusal(self) -> None:
        failed = not_run(1, unknown_server("crm"))
        assert (failed.code, failed.retryable) == ("unknown_server", False)
        assert failed.reason == "unknown_server: 'crm' is not registered"


class TestGuards:
    def test_a_started_attempt_without_a_verdict_may_still_be_running(self) -> None:
        assert not attempt_may_be_running(authorized(False))
        assert attempt_may_be_running(authorized(False, started(1)))
        failed = ev.ExecutionAttemptFailed(attempt=1, code="x", reason="x", retry_after_ms=0)
        assert not attempt_may_be_running(authorized(True, started(1), failed))
        done = ev.ExecutionSucceeded(attempt=1, result={}, result_digest="r", duration_ms=1)
        assert not attempt_may_be_running(authorized(False, started(1), done))

    def test_an_intent_already_done_or_not_authorized_needs_nothing(self) -> None:
        done = ev.ExecutionSucceeded(attempt=1, result={}, result_digest="r", duration_ms=1)
        assert decide_execution(authorized(False, started(1), done), now=datetime.now(UTC)) is None
        assert decide_execution(replace(authorized(False), authorized=None), now=datetime.now(UTC)) is None
        assert decide_execution(authorized(False), now=datetime.now(UTC)) == Invoke(attempt=1)

    def test_past_the_deadline_an_unanswered_call_is_unknown_and_an_unstarted_one_expired(self) -> None:
        begun, unstarted = authorized(False, started(1), deadline_seconds=1), authorized(False, deadline_seconds=1)
        assert begun.deadline is not None and unstarted.deadline is not None
        unknown = decide_execution(begun, now=begun.deadline + timedelta(seconds=1))
        assert isinstance(unknown, ev.ExecutionOutcomeUnknown)
        expired = decide_execution(unstarted, now=unstarted.deadline + timedelta(seconds=1))
        assert isinstance(expired, ev.IntentExpired)

    def test_a_retry_or_an_approved_call_is_never_shed(self) -> None:
        view = authorized(True)
        assert may_shed(view, 1)
        assert not may_shed(view, 2)
        approval = ev.ApprovalRequested(
            approval_digest="d", policy_digest="p", policy_ids=[], group="ops", quorum=1, expires_at="x"
        )
        assert not may_shed(replace(view, approval=approval), 1)


class TestDeadline:
    def test_a_call_never_outlives_the_deadline(self) -> None:
        view = authorized(True, deadline_seconds=300)
        assert call_timeout(view, datetime.now(UTC), 30.0) == 30.0
        deadline = view.deadline
        assert deadline is not None
        assert call_timeout(view, deadline - timedelta(seconds=2), 30.0) == pytest.approx(2.0)
        assert (
            call_timeout(view, deadline + timedelta(seconds=2), 30.0) == 0.001
        )  # never 0 (too_late_to_call keeps such a call from being sent)
        assert (
            call_timeout(replace(view, submitted=None), datetime.now(UTC), 30.0) == 30.0
        )  # no deadline: the tool timeout

    def test_a_call_the_deadline_leaves_no_time_for_ends_expired_not_sent(self) -> None:
        """Sent with no time left it would time out at once, and a non-idempotent call that timed
        out is an unknown outcome: a person would have to settle a call that surely did not run."""
        view = authorized(False, deadline_seconds=300)
        deadline = view.deadline
        assert deadline is not None
        assert too_late_to_call(view, deadline - timedelta(seconds=2), fastest_call_ms=5.0) is None
        late = too_late_to_call(view, deadline - timedelta(milliseconds=20), fastest_call_ms=5.0)
        assert isinstance(late, ev.IntentExpired) and late.stage == "execute"
        assert "left 0.020s, less than the 0.050s" in late.reason and "not called" in late.reason
        # A route whose calls take longer needs more: its fastest call of late.
        slow = too_late_to_call(view, deadline - timedelta(seconds=1), fastest_call_ms=1500.0)
        assert slow is not None and "less than the 1.500s" in slow.reason
        assert too_late_to_call(view, deadline - timedelta(seconds=1), fastest_call_ms=None) is None
        assert too_late_to_call(view, deadline + timedelta(seconds=1), fastest_call_ms=None) is not None
        assert too_late_to_call(replace(view, submitted=None), datetime.now(UTC), 5.0) is None  # no deadline


class TestRefusals:
    def test_reconcile_says_no_with_a_code(self) -> None:
        unknown = authorized(False, started(1), ev.ExecutionOutcomeUnknown(attempt=1, reason="x"))
        refusal = reconcile(unknown, "retry", "alice", "", None)
        assert isinstance(refusal, Refusal) and refusal.code == "invalid_request"
        done = ev.ExecutionSucceeded(attempt=1, result={}, result_digest="r", duration_ms=1)
        refusal = reconcile(authorized(False, started(1), done), "failed", "a", "", None)
        assert isinstance(refusal, Refusal) and refusal.code == "not_unknown" and "succeeded" in refusal.reason

    def test_a_mismatched_approval_is_a_final_failure_named_for_it(self) -> None:
        approval = ev.ApprovalRequested(
            approval_digest="sha256:wrong", policy_digest="p", policy_ids=[], group="ops", quorum=1, expires_at="x"
        )
        step = next_step(replace(authorized(False), approval=approval))
        assert isinstance(step, ev.ExecutionFailed) and step.code == "approval_mismatch" and not step.retryable
        assert step.reason.startswith("approval_mismatch: the approved digest")

    def test_a_secret_too_short_to_redact_is_refused(self) -> None:
        refusal = invalid_secret_value("x" * (MIN_SECRET_LENGTH - 1))
        assert refusal is not None and refusal.code == "invalid_secret"
        assert invalid_secret_value("x" * MIN_SECRET_LENGTH) is None


def test_slots_hold_each_limit_between_this_replicas_floor_and_ceiling() -> None:
    limits = Limits(by_server={"low": 1, "mid": 6, "high": 40})
    assert slot_limits(limits, Tuning(floor=4, ceiling=16, window_s=10, verify_s=10)) == {
        "low": 4,
        "mid": 6,
        "high": 16,
    }

"""Executor's rules: run it, run it again, or admit we cannot know? Pure functions."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec

from writ_common import events as ev
from writ_common.approvals import request_digest
from writ_common.cancellation import cancel_reason
from writ_common.digest import sha256_digest
from writ_common.envelope import MAX_CONTENT_DEPTH, nesting_depth_exceeds
from writ_common.errors import Refusal
from writ_common.fold import IntentView
from writ_common.stranded import expiry, past_deadline, unanswered_call

MAX_ATTEMPTS = 3
BACKOFF_BASE = 0.5  # seconds; attempt n waits uniform(0, min(cap, base * 2**(n-1)))
BACKOFF_CAP = 10.0


@dataclass(frozen=True, slots=True)
class Invoke:
    """Call the tool as this attempt."""

    attempt: int


@dataclass(frozen=True, slots=True)
class CallError:
    """How a call went wrong, as far as the executor can tell.

    ``not_sent``: the server was unreachable or its breaker open; the call surely did not run.
    ``interrupted``: the connection broke or timed out after the call was sent; it may have run.
    ``refused``: the server answered with a protocol error; retrying will not help.
    """

    kind: Literal["not_sent", "interrupted", "refused"]
    code: str
    message: str
    # A refusal's JSON-RPC error as the server sent it ({"code", "message", "data"?}): recorded as the
    # failure's result, so whoever answers for Writ (the MCP gateway) can pass it on with its code.
    error: dict[str, Any] | None = None


def decide_execution(
    view: IntentView, *, now: datetime, max_attempts: int = MAX_ATTEMPTS
) -> Invoke | ev.Payload | None:
    """The deadline first, then :func:`next_step`. Past the deadline an intent ends expired,
    except one whose non-idempotent call was started and never answered: that call may have
    run, and an expiry would hide it, so it ends ``outcome_unknown``."""
    if view.is_terminal or view.authorized is None:
        return None
    if past_deadline(view, now):
        unknown = unanswered_call(view)
        return unknown if unknown is not None else expiry(view, "execute", now)[0]
    return next_step(view, max_attempts)


def next_step(view: IntentView, max_attempts: int = MAX_ATTEMPTS) -> Invoke | ev.Payload | None:
    """What the executor must do for an authorized intent, given what the log says happened.

    Started but never finished means a previous executor died mid-call: only a tool known to
    be idempotent is invoked again (with the same idempotency key); any other ends as
    ``outcome_unknown`` for a person to reconcile. Never a blind second call.
    """
    if view.is_terminal or view.authorized is None or view.planned is None:
        return None
    if (cancelled := cancelled_step(view)) is not None:
        return cancelled
    if view.approval is not None and (mismatch := approval_mismatch(view)):
        return not_run(view.last_attempt, mismatch)
    if not view.started:
        return Invoke(attempt=1)
    failed = view.last_attempt_failed
    if failed is None and not view.planned.annotations.idempotent:
        return ev.ExecutionOutcomeUnknown(
            attempt=view.last_attempt,
            reason=(
                f"outcome_unknown: attempt {view.last_attempt} of non-idempotent {view.planned.server}/"
                f"{view.planned.tool} was interrupted; it may or may not have run"
            ),
        )
    if view.last_attempt >= max_attempts:
        why = failed.reason if failed else "the executor was interrupted during every attempt"
        return ev.ExecutionFailed(
            attempt=view.last_attempt,
            retryable=True,
            code=failed.code if failed else "attempts_exhausted",
            reason=f"{why} (gave up after {view.last_attempt} attempts)",
        )
    return Invoke(attempt=view.last_attempt + 1)


def cancelled_step(view: IntentView) -> ev.IntentCancelled | None:
    """The agent asked to cancel an authorized intent that no call of this executor is running
    (one running here is stopped by :mod:`writ_executor.cancels`): no call yet, or a failed attempt
    waiting for its retry, ends ``cancelled`` and is not called; an interrupted attempt of an
    idempotent tool is not called again. An interrupted attempt of any other tool may have run:
    None, and the unknown-outcome rule holds (a cancel request does not hide a possible effect)."""
    request = view.cancel_requested
    if request is None or view.is_terminal:
        return None
    if not view.started:
        return ev.IntentCancelled(stage="execute", reason=cancel_reason(request, "before its call was made"))
    attempt = view.last_attempt
    if (failed := view.last_attempt_failed) is not None:
        why = f"after attempt {attempt} failed ({failed.code}); it is not tried again"
        return ev.IntentCancelled(stage="execute", attempt=attempt, reason=cancel_reason(request, why))
    assert view.planned is not None
    if not view.planned.annotations.idempotent:
        return None
    why = f"after attempt {attempt} of idempotent {view.planned.server}/{view.planned.tool} was interrupted; not called again"
    return ev.IntentCancelled(stage="execute", attempt=attempt, reason=cancel_reason(request, why))


def after_error(
    view: IntentView,
    attempt: int,
    error: CallError,
    *,
    now: datetime,
    max_attempts: int = MAX_ATTEMPTS,
    rng: random.Random | None = None,
) -> ev.Payload:
    """The event for a failed call: retry later, give up, or admit the outcome is unknown."""
    assert view.planned is not None
    idempotent = view.planned.annotations.idempotent
    if error.kind == "refused":
        return ev.ExecutionFailed(
            attempt=attempt,
            retryable=False,
            code=error.code,
            reason=f"{error.code}: {error.message}",
            result={"error": error.error} if error.error is not None else None,
        )
    if error.kind == "interrupted" and not idempotent:
        return ev.ExecutionOutcomeUnknown(
            attempt=attempt, reason=f"outcome_unknown: {error.message}; the call may have taken effect"
        )
    reason = f"{error.code}: {error.message}"
    if attempt >= max_attempts:
        return ev.ExecutionFailed(
            attempt=attempt, retryable=True, code=error.code, reason=f"{reason} (gave up after {attempt} attempts)"
        )
    delay = (rng or random).uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))
    deadline = view.deadline
    if deadline is not None and now + timedelta(seconds=delay) >= deadline:
        return ev.ExecutionFailed(
            attempt=attempt,
            retryable=True,
            code=error.code,
            reason=f"{reason} (no time left before the deadline to retry)",
        )
    return ev.ExecutionAttemptFailed(attempt=attempt, code=error.code, reason=reason, retry_after_ms=int(delay * 1000))


def approval_mismatch(view: IntentView) -> Refusal | None:
    """Recompute the approval digest from the history: what runs must be what was approved, by
    as many distinct approvers as the request asked, each on exactly that digest."""
    request = view.approval
    assert request is not None
    expected = request_digest(
        view,
        policy_digest=request.policy_digest,
        approval_group=request.group,
        quorum=request.quorum,
        owner_may_approve=request.owner_may_approve,
        expires_at=request.expires_at,
    )
    if expected != request.approval_digest:
        return Refusal(code="approval_mismatch", reason="the approved digest does not match this intent's history")
    approvers = {g.approver_id for g in view.grants if g.approval_digest == expected}
    if len(approvers) < request.quorum:
        return Refusal(
            code="approval_mismatch",
            reason=f"{len(approvers)} distinct grant(s) on this digest, but the request needs {request.quorum}",
        )
    return None


def attempt_may_be_running(view: IntentView) -> bool:
    """An attempt was started and nothing says how it ended: it may still be running (its lease
    says whether anyone holds it) or it was interrupted."""
    return bool(view.started) and not view.is_terminal and view.last_attempt_failed is None


def needs_recheck(view: IntentView, current_policy_digest: str | None) -> bool:
    """A call authorized under another bundle than the one in force must be re-checked before it
    runs (an emergency forbid loaded after the authorization must stop it)."""
    if view.authorized is None:
        return False
    return current_policy_digest is not None and view.authorized.policy_digest != current_policy_digest


def policy_changed(reason: str) -> ev.ExecutionFailed:
    """The call was authorized, but the bundle loaded since then no longer permits it."""
    return ev.ExecutionFailed(
        attempt=0,
        retryable=False,
        code="policy_changed",
        reason=f"policy_changed: the policy in force no longer permits this call ({reason or 'denied'}); it did not run",
    )


def idempotency_key(view: IntentView) -> str:
    """The key the tool server sees: stable across attempts and executor restarts."""
    assert view.intent_id
    return view.intent_id


def call_arguments(view: IntentView) -> dict[str, Any]:
    """The arguments sent: the intent's, plus the idempotency key where the tool takes one."""
    assert view.submitted is not None and view.planned is not None
    arguments = dict(view.submitted.arguments)
    if view.planned.idempotency_arg:
        arguments[view.planned.idempotency_arg] = idempotency_key(view)
    return arguments


def outcome(
    attempt: int, result: dict[str, Any], is_error: bool, duration_ms: float, *, max_output_bytes: int = 1024 * 1024
) -> ev.Payload:
    """The event for a finished call: the tool's own error is a failure, not a retry; output over
    the limit is not kept (the call did run, and the reason says so)."""
    encoded = json.dumps(result).encode()
    size = len(encoded)
    if size > max_output_bytes:
        return ev.ExecutionFailed(
            attempt=attempt,
            retryable=False,
            code="output_too_large",
            reason=(
                f"output_too_large: the call ran, but its output is {size} bytes of JSON, over the"
                f" {max_output_bytes}-byte limit, and was not kept"
            ),
        )
    if nesting_depth_exceeds(encoded, MAX_CONTENT_DEPTH):
        return ev.ExecutionFailed(
            attempt=attempt,
            retryable=False,
            code="output_too_deep",
            reason=(
                f"output_too_deep: the call ran, but its output nests more than {MAX_CONTENT_DEPTH} levels"
                " deep, and was not kept"
            ),
        )
    if is_error:
        # The tool's own words may repeat what it was sent (an email, a card number): they stay in
        # the result, which only a full-scope reader sees; the reason says only what happened.
        return ev.ExecutionFailed(
            attempt=attempt,
            retryable=False,
            code="tool_error",
            reason="tool_error: the tool reported an error (its own message is in the result)",
            result=result,
        )
    return ev.ExecutionSucceeded(
        attempt=attempt, result=result, result_digest=sha256_digest(result), duration_ms=duration_ms
    )


def reconcile(
    view: IntentView, outcome: Literal["succeeded", "failed", "retry"], by: str, note: str, retry_intent_id: str | None
) -> ev.ExecutionReconciled | Refusal:
    """A person settles an unknown outcome, once; returns the event or why it cannot be."""
    if view.terminal is None or view.terminal.type != "execution.outcome_unknown":
        return Refusal(
            code="not_unknown", reason=f"intent is {view.status}; only an outcome_unknown intent is reconciled"
        )
    if view.reconciled is not None:
        return Refusal(
            code="already_reconciled", reason=f"{view.reconciled.by} settled it as {view.reconciled.outcome}"
        )
    if (outcome == "retry") != (retry_intent_id is not None):
        return Refusal(
            code="invalid_request", reason="a retry names the new intent that retries the call, and only a retry does"
        )
    return ev.ExecutionReconciled(
        attempt=view.last_attempt, outcome=outcome, by=by, note=note, retry_intent_id=retry_intent_id
    )


def not_run(attempt: int, refusal: Refusal) -> ev.ExecutionFailed:
    """The call was not made, and trying again will not make it (an unknown server, a missing
    secret, an approval that does not match): a final failure carrying the refusal."""
    return ev.ExecutionFailed(attempt=attempt, retryable=False, code=refusal.code, reason=str(refusal))


def unknown_server(name: str) -> Refusal:
    return Refusal(code="unknown_server", reason=f"{name!r} is not registered")


def circuit_open(server: str, wait_s: float) -> CallError:
    """The server's breaker is open: the call is not sent (a retry, within the attempts)."""
    return CallError("not_sent", "circuit_open", f"{server!r} is failing; breaker open for {wait_s:.1f}s more")


def counts_against_breaker(error: CallError) -> bool:
    """A server that answered with a protocol error is up: only a call it never answered (not
    sent, or interrupted) counts toward opening its breaker."""
    return error.kind != "refused"


def may_shed(view: IntentView, attempt: int) -> bool:
    """A first attempt over its route's limit may be answered ``overloaded``; a retry of a call
    already begun, or a call a person approved, never is (it waits for a place instead)."""
    return attempt == 1 and view.approval is None


MIN_CALL_SECONDS = 0.05  # the least a call is given to be answered, however fast its route


def too_late_to_call(view: IntentView, now: datetime, fastest_call_ms: float | None) -> ev.IntentExpired | None:
    """An attempt not worth starting: the deadline leaves less than the route's fastest call of
    late (at least :data:`MIN_CALL_SECONDS`). Sent, it would time out at once, and a
    non-idempotent call that timed out ends ``outcome_unknown`` for a person to settle, where not
    sending it is surely not running it: the intent ends expired, not called. None: call it."""
    deadline, planned, submitted = view.deadline, view.planned, view.submitted
    if deadline is None or planned is None or submitted is None:
        return None
    left = (deadline - now).total_seconds()
    needs = max(MIN_CALL_SECONDS, (fastest_call_ms or 0.0) / 1000)
    if left >= needs:
        return None
    return ev.IntentExpired(
        stage="execute",
        reason=(
            f"deadline {submitted.deadline} left"
            f" {max(left, 0.0):.3f}s, less than the {needs:.3f}s a call to {planned.server}/{planned.tool} needs"
            " (its fastest lately); not called"
        ),
    )


def call_timeout(view: IntentView, now: datetime, tool_timeout: float) -> float:
    """How long the call may take: the tool timeout, and never past the agent's deadline (at least
    a millisecond; a call with less time left than its route needs is not sent at all:
    :func:`too_late_to_call`)."""
    deadline = view.deadline
    if deadline is None:
        return tool_timeout
    return min(tool_timeout, max(0.001, (deadline - now).total_seconds()))


def returned_error(error: dict[str, Any], max_output_bytes: int) -> dict[str, Any]:
    """A server's JSON-RPC error as recorded: its ``data`` is dropped when the whole would not fit
    the output limit or the nesting bound of a recorded event (code and message are what a caller
    needs)."""
    encoded = msgspec.json.encode(error)
    if len(encoded) > max_output_bytes or nesting_depth_exceeds(encoded, MAX_CONTENT_DEPTH - 4):
        return {k: v for k, v in error.items() if k != "data"}
    return error

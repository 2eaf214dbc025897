"""Executor's rules: run it, run it again, or admit we cannot know? Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from writ_common import events as ev
from writ_common.digest import approval_digest, sha256_digest
from writ_common.fold import IntentView


@dataclass(frozen=True, slots=True)
class Invoke:
    """Call the tool as this attempt."""

    attempt: int


def next_step(view: IntentView) -> Invoke | ev.Payload | None:
    """What the executor must do for an authorized intent, given what the log says happened.

    Started but never finished means a previous executor died mid-call: only a tool known to
    be idempotent is invoked again (with the same idempotency key); any other ends as
    ``outcome_unknown`` for a person to reconcile. Never a blind second call.
    """
    if view.is_terminal or view.authorized is None or view.planned is None:
        return None
    if view.approval is not None and (mismatch := approval_mismatch(view)):
        return ev.ExecutionFailed(attempt=view.last_attempt, retryable=False, code="approval_mismatch", reason=mismatch)
    if view.started:
        if view.planned.annotations.idempotent:
            return Invoke(attempt=view.last_attempt + 1)
        return ev.ExecutionOutcomeUnknown(
            attempt=view.last_attempt,
            reason=(
                f"outcome_unknown: attempt {view.last_attempt} of non-idempotent {view.planned.server}/"
                f"{view.planned.tool} was interrupted; it may or may not have run"
            ),
        )
    return Invoke(attempt=1)


def approval_mismatch(view: IntentView) -> str | None:
    """Recompute the approval digest from the history: what runs must be what was approved."""
    assert view.approval is not None and view.planned is not None and view.submitted is not None
    expected = approval_digest(
        intent_id=view.intent_id or "",
        agent_id=view.agent_id or "",
        on_behalf_of=view.submitted.on_behalf_of,
        tool_digest=view.planned.tool_digest,
        args_digest=view.planned.args_digest,
        policy_digest=view.approval.policy_digest,
        deadline=view.submitted.deadline,
    )
    if expected != view.approval.approval_digest:
        return "approval_mismatch: the approved digest does not match this intent's history"
    return None


def idempotency_key(view: IntentView) -> str:
    """The key the tool server sees: stable across attempts and executor restarts."""
    assert view.intent_id
    return view.intent_id


def outcome(attempt: int, result: dict[str, Any], is_error: bool, duration_ms: float) -> ev.Payload:
    """The event for a finished call: the tool's own error is a failure, not a retry."""
    if is_error:
        text = " ".join(c.get("text", "") for c in result.get("content", []) if c.get("type") == "text").strip()
        return ev.ExecutionFailed(
            attempt=attempt,
            retryable=False,
            code="tool_error",
            reason=f"tool_error: {text or 'the tool reported an error'}",
            result=result,
        )
    return ev.ExecutionSucceeded(
        attempt=attempt, result=result, result_digest=sha256_digest(result), duration_ms=duration_ms
    )

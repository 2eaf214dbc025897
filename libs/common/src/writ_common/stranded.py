"""Nothing stranded: an intent past its deadline ends, whatever left it behind. Pure rules.

Every stage checks the deadline when it acts, but a stage that never acts (its trigger lost,
taken for "nothing to do", its consumer gone) would leave the intent open forever. A sweeper
(:mod:`writ_common.sweeper`) finds open intents past their deadline plus a grace and ends them
by these rules, with fenced appends, so any number of replicas may sweep at once:

- an intent with an execution attempt started and never answered belongs to the executor: the
  call may have run, so a non-idempotent tool's intent ends ``execution.outcome_unknown`` (an
  expiry would hide a possible side effect) and an idempotent one's ``intent.expired`` (running
  it again is harmless, so the agent may simply submit again);
- any other open intent ends ``intent.expired`` at the stage it was waiting for, appended by a
  stage service (policy sweeps).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from writ_common import events as ev
from writ_common.envelope import StoredEvent, parse_time
from writ_common.fold import IntentView
from writ_common.receipts import Finding

# Past the deadline by this much, an intent is swept: the stages' own expiry comes first.
SWEEP_GRACE = timedelta(seconds=2)


def past_due(submitted: StoredEvent, now: datetime, grace: timedelta = SWEEP_GRACE) -> bool:
    """The sweeper's first look, from the submitted event alone: its deadline plus ``grace`` has
    passed (no deadline, or one that does not parse: never; the stages refuse those)."""
    deadline = getattr(submitted.payload, "deadline", None)
    if not deadline:
        return False
    try:
        return now > parse_time(deadline) + grace
    except ValueError:
        return False


def waiting_for(view: IntentView) -> ev.Stage:
    """The stage an open intent waits for."""
    if view.started or view.authorized is not None:
        return "execute"
    if view.planned is not None:
        return "authorize"
    if view.authenticated is not None:
        return "plan"
    return "authenticate"


def attempt_open(view: IntentView) -> bool:
    """An execution attempt was started and nothing says how it ended: the call may have run."""
    return bool(view.started) and view.last_attempt_failed is None


def past_deadline(view: IntentView, now: datetime, grace: timedelta = timedelta(0)) -> bool:
    """Open, and ``now`` is past its deadline by more than ``grace`` (no deadline: never)."""
    deadline = view.deadline
    return not view.is_terminal and deadline is not None and now > deadline + grace


def expiry(view: IntentView, stage: ev.Stage, now: datetime) -> list[ev.Payload]:
    """Every stage checks the agent's deadline first: past it, the intent ends as expired."""
    if not past_deadline(view, now):
        return []
    deadline = view.submitted.deadline if view.submitted else ""
    return [ev.IntentExpired(stage=stage, reason=f"deadline {deadline} passed before {stage}")]


def unanswered_call(view: IntentView) -> ev.ExecutionOutcomeUnknown | None:
    """The end of an intent past its deadline whose non-idempotent call was started and never
    answered: it may or may not have run (None when that is not the case)."""
    if not attempt_open(view) or view.planned is None or view.planned.annotations.idempotent:
        return None
    return ev.ExecutionOutcomeUnknown(
        attempt=view.last_attempt,
        reason=(
            f"outcome_unknown: attempt {view.last_attempt} of non-idempotent {view.planned.server}/"
            f"{view.planned.tool} has no outcome and the deadline has passed; it may or may not have run"
        ),
    )


def sweep_stage(view: IntentView, now: datetime, grace: timedelta = SWEEP_GRACE) -> list[ev.Payload]:
    """A stage service's sweep (policy's): expire an open intent past its deadline and grace,
    unless an attempt is open (then it is the executor's: :func:`sweep_execution`)."""
    if not past_deadline(view, now, grace) or attempt_open(view):
        return []
    stage = waiting_for(view)
    deadline = view.submitted.deadline if view.submitted else ""
    return [
        ev.IntentExpired(
            stage=stage,
            reason=f"deadline {deadline} passed while the intent waited for {stage}; no stage ended it",
        )
    ]


def sweep_execution(view: IntentView, now: datetime, grace: timedelta = SWEEP_GRACE) -> list[ev.Payload]:
    """The executor's sweep: an open attempt past the deadline and grace ends outcome_unknown
    (non-idempotent) or expired (idempotent). The call's timeout never outlasts the deadline,
    so past the grace no executor is still waiting on it."""
    if not past_deadline(view, now, grace) or not attempt_open(view):
        return []
    if (unknown := unanswered_call(view)) is not None:
        return [unknown]
    return [
        ev.IntentExpired(
            stage="execute",
            reason=f"deadline {view.submitted.deadline if view.submitted else ''} passed with attempt"
            f" {view.last_attempt} of an idempotent tool unanswered",
        )
    ]


def stranded_findings(views: Mapping[str, IntentView], now: datetime, grace: timedelta = SWEEP_GRACE) -> list[Finding]:
    """``stranded_intent`` for each intent with no terminal event past its deadline and grace."""
    return [
        Finding(
            "stranded_intent",
            None,
            intent_id,
            f"stranded_intent: {intent_id} is still {view.status} past its deadline"
            f" {view.submitted.deadline if view.submitted else ''}; nothing ended it",
        )
        for intent_id, view in sorted(views.items())
        if view.submitted is not None and past_deadline(view, now, grace)
    ]

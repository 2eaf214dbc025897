"""Folding an intent's history into the state every stage decides on."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from writ_common import events as ev
from writ_common import topology
from writ_common.envelope import StoredEvent, parse_time


@dataclass(slots=True)
class IntentView:
    """What the log says about one intent, so far."""

    intent_id: str | None = None
    agent_id: str | None = None
    submitted: ev.IntentSubmitted | None = None
    submitted_event: StoredEvent | None = None
    authenticated: ev.IntentAuthenticated | None = None
    planned: ev.IntentPlanned | None = None
    authorized: ev.IntentAuthorized | None = None
    approval: ev.ApprovalRequested | None = None
    grants: list[ev.ApprovalGranted] = field(default_factory=list)
    approval_denial: ev.ApprovalDenied | None = None  # an approver said no (policy's own no is `denied`)
    cancel_requested: ev.IntentCancelRequested | None = None  # the agent asked to stop it (the first ask)
    started: list[ev.ExecutionStarted] = field(default_factory=list)
    attempt_failures: list[ev.ExecutionAttemptFailed] = field(default_factory=list)
    terminal: StoredEvent | None = None
    reconciled: ev.ExecutionReconciled | None = None  # a person's word after outcome_unknown
    events: list[StoredEvent] = field(default_factory=list)

    @property
    def is_terminal(self) -> bool:
        return self.terminal is not None

    @property
    def deadline(self) -> datetime | None:
        if self.submitted is None or not self.submitted.deadline:
            return None
        try:
            return parse_time(self.submitted.deadline)
        except ValueError:
            return None

    @property
    def last_attempt(self) -> int:
        return self.started[-1].attempt if self.started else 0

    @property
    def last_attempt_failed(self) -> ev.ExecutionAttemptFailed | None:
        """The failure of the latest attempt, if that attempt is known to have failed."""
        if self.attempt_failures and self.attempt_failures[-1].attempt == self.last_attempt:
            return self.attempt_failures[-1]
        return None

    @property
    def approval_pending(self) -> bool:
        """Waiting for people: requested, not yet authorized, denied or ended."""
        return (
            self.approval is not None
            and self.authorized is None
            and self.approval_denial is None
            and not self.is_terminal
        )

    def has(self, event_type: str) -> bool:
        return any(e.type == event_type for e in self.events)

    @property
    def status(self) -> str:
        """A one-word status for people: the stage reached, or how it ended."""
        if self.terminal is not None:
            return ev.TERMINAL_STATUS[self.terminal.type]
        reached = {
            "execution.started": bool(self.started),
            "intent.authorized": self.authorized is not None,
            "approval.requested": self.approval is not None,
            "intent.planned": self.planned is not None,
            "intent.authenticated": self.authenticated is not None,
            "intent.submitted": self.submitted is not None,
        }
        return next((ev.STAGE_STATUS[t] for t in reversed(ev.STAGE_STATUS) if reached[t]), "unknown")


def _carried_by_subject(event: StoredEvent) -> bool:
    """The subject names the type: an event on ``...submitted`` is a submission, whatever its
    envelope says (events built in memory, without a subject, are taken as they are)."""
    if not event.subject:
        return True
    return topology.TYPE_OF_TOKEN.get(event.subject.rpartition(".")[2]) == event.type


def fold_intent(history: list[StoredEvent]) -> IntentView:
    """Fold events (in stream order) into an :class:`IntentView`. Events after the terminal one
    are kept in ``events`` but change nothing: the first terminal event wins. Each stage's event
    counts once, the first (stages are fenced, so a second one can only be a forgery); an
    event its subject does not carry, or an advisory one (a shadow decision), counts not at all."""
    view = IntentView()
    for event in history:
        if not _carried_by_subject(event) or event.type in ev.ADVISORY_TYPES:
            continue
        view.events.append(event)
        if view.terminal is not None:
            # After the end only a reconciliation of an unknown outcome still means something.
            if (
                isinstance(event.payload, ev.ExecutionReconciled)
                and view.terminal.type == "execution.outcome_unknown"
                and view.reconciled is None
            ):
                view.reconciled = event.payload
            continue
        _apply(view, event)
        if event.type in ev.TERMINAL_TYPES:
            view.terminal = event
    return view


def _apply(view: IntentView, event: StoredEvent) -> None:
    """One event of an open intent: the first of each stage's events counts."""
    payload = event.payload
    match payload:
        case ev.IntentSubmitted() if view.submitted is None:
            view.submitted = payload
            view.submitted_event = event
            view.intent_id = event.envelope.intent_id
            view.agent_id = event.envelope.agent_id
        case ev.IntentAuthenticated() if view.authenticated is None:
            view.authenticated = payload
        case ev.IntentPlanned() if view.planned is None:
            view.planned = payload
        case ev.IntentAuthorized() if view.authorized is None:
            view.authorized = payload
        case ev.ApprovalRequested() if view.approval is None:
            view.approval = payload
        case ev.ApprovalGranted() if all(g.approver_id != payload.approver_id for g in view.grants):
            view.grants.append(payload)
        case ev.ApprovalDenied() if view.approval_denial is None:
            view.approval_denial = payload
        case ev.IntentCancelRequested() if view.cancel_requested is None and view.submitted is not None:
            view.cancel_requested = payload
        case ev.ExecutionStarted():
            view.started.append(payload)
        case ev.ExecutionAttemptFailed():
            view.attempt_failures.append(payload)
        case _:
            pass

"""An agent's request to cancel its own intent, and what it means where the intent stands. Pure.

The request (``intent.cancel_requested``) is recorded in the intent's history like any event; it
ends nothing by itself. The stage that next acts on the intent ends it ``intent.cancelled``
instead of deciding; the executor running its call cancels the call and records the same; an
intent that has already ended is not changed (its receipt says how it ended).
"""

from __future__ import annotations

from writ_common import events as ev
from writ_common.fold import IntentView


def cancel_reason(request: ev.IntentCancelRequested, when: str) -> str:
    """``cancelled by its agent <when> (<the agent's reason>)``."""
    said = f" ({request.reason})" if request.reason else ""
    return f"cancelled by its agent {when}{said}"


def cancellation(view: IntentView, stage: ev.Stage) -> list[ev.Payload]:
    """What a stage appends instead of deciding: ``intent.cancelled`` at ``stage`` when the agent
    asked to cancel an open intent whose call has not been started (nothing otherwise; a started
    call is the executor's to settle)."""
    request = view.cancel_requested
    if request is None or view.is_terminal or view.started:
        return []
    return [ev.IntentCancelled(stage=stage, reason=cancel_reason(request, f"before {stage}"))]


def call_cancelled(request: ev.IntentCancelRequested, attempt: int, *, sent: bool) -> ev.IntentCancelled:
    """The end of a call the executor stopped at its agent's ``request``: while it ran (``sent``:
    the call's task was cancelled and its server sent ``notifications/cancelled``; what the server
    did before it stopped is the server's to say) or before its request went out."""
    when = (
        f"during attempt {attempt}: the call was stopped, and its server sent notifications/cancelled for the"
        " request if it had gone out (what the server did before stopping is not known)"
        if sent
        else f"before attempt {attempt} was sent"
    )
    return ev.IntentCancelled(stage="execute", attempt=attempt, reason=cancel_reason(request, when))
